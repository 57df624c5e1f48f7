"""The OpenAI Agents SDK (`openai-agents`) with an MCP server attached, against a real `voxd serve`.

The agent's tools come from an MCP server written with the official Python MCP SDK
(tests/python/shop_mcp.py, at VOXD_MCP_URL): the SDK lists them (`mcp_servers`), offers them to
voxd as the session's functions, runs the call the model makes on the MCP server, and sends the
result back; the agent answers from it. Run by tests/clients.rs (VOXD_WS_URL, VOXD_API_KEY).
"""

import asyncio
import logging
import os

from agents.mcp import MCPServerStreamableHttp, create_static_tool_filter
from agents.realtime import RealtimeAgent, RealtimeRunner


async def main():
    problems = []

    class Failures(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                problems.append(self.format(record))

    logging.getLogger("openai.agents").addHandler(Failures())
    shop = MCPServerStreamableHttp(
        params={"url": os.environ["VOXD_MCP_URL"]},
        name="shop",
        cache_tools_list=True,
        tool_filter=create_static_tool_filter(allowed_tool_names=["order_status"]),
    )
    async with shop:
        agent = RealtimeAgent(
            name="Shop",
            instructions="You are a shop's assistant. Use your tool, then answer in one short sentence.",
            mcp_servers=[shop],
        )
        runner = RealtimeRunner(
            starting_agent=agent,
            config={"model_settings": {"model_name": "gpt-realtime", "tool_choice": "required",
                                       "output_modalities": ["text"]}},
        )
        session = await runner.run(
            model_config={"url": os.environ["VOXD_WS_URL"], "api_key": os.environ["VOXD_API_KEY"]}
        )
        seen, answer, output, tool = [], "", None, None

        async def read():
            nonlocal answer, output, tool
            async for event in session:
                seen.append(event.type)
                if event.type == "error":
                    raise SystemExit(f"the SDK reported an error: {event.error}")
                if event.type == "tool_start":
                    tool = event.tool.name
                if event.type == "tool_end":
                    output = event.output
                if event.type == "raw_model_event" and event.data.type in ("transcript_delta", "output_text_delta"):
                    answer += event.data.delta
                if event.type == "agent_end" and output is not None and answer.strip():
                    return

        async with session:
            await session.send_message("Where is my order AB1234?")
            try:
                await asyncio.wait_for(read(), 240)
            except BaseException:
                print("events seen:", seen, "output:", output, "answer:", answer)
                raise
    print(f"called {tool} on the MCP server: {output!r}; answered {answer!r}")
    assert tool == "order_status", tool
    # The order id the person said reached the MCP server, and its result the answer.
    assert output and "Order AB1234 has shipped" in str(output), output
    assert "friday" in answer.lower(), f"the answer does not use the result: {answer!r}"
    bad = [p for p in problems if "validat" in p.lower() or "error" in p.lower()]
    if bad:
        raise SystemExit("the SDK logged problems:\n" + "\n".join(bad))
    print("ok: the Agents SDK ran an MCP server's tool against voxd")


if __name__ == "__main__":
    asyncio.run(main())
