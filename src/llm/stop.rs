//! Stop strings over a stream of text pieces: text is passed on as soon as it cannot be the start
//! of a stop string, and generation ends just before the first stop string.

/// Scans streamed text for stop strings.
#[derive(Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    pending: String,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        StopScanner {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns what can be emitted now and whether a stop string was reached (the
    /// stop string and anything after it are dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest tail that could still grow into a stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Whatever is still held back (the stream ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_flows_until_a_stop_string_split_across_pieces() {
        let mut s = StopScanner::new(&["\nUser:".to_string()]);
        assert_eq!(s.push("Hello"), ("Hello".into(), false));
        assert_eq!(
            s.push(" there\nUs"),
            (" there".into(), false),
            "possible stop held back"
        );
        assert_eq!(s.push("er: next"), (String::new(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut s = StopScanner::new(&["STOP".to_string()]);
        assert_eq!(s.push("ST"), (String::new(), false));
        assert_eq!(s.push("ART"), ("START".into(), false));
        assert_eq!(s.push("ST"), (String::new(), false));
        assert_eq!(s.finish(), "ST");
        let mut none = StopScanner::new(&[]);
        assert_eq!(none.push("é"), ("é".into(), false));
    }
}
