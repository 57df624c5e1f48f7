//! A stateful streaming resampler to 16 kHz over rubato's windowed-sinc resampler.
//!
//! The realtime path feeds 10–40 ms frames of any size; rubato wants fixed-size input chunks.
//! [`StreamResampler`] buffers input and always runs rubato on the same internal chunk (10 ms of
//! input), so the output does not depend on how the input was split: streaming in chunks gives
//! bit-identical samples to one call. rubato's output is already time-aligned (an impulse at input
//! time t comes out at output time t, measured in the tests), so nothing is trimmed at the start;
//! at the end, [`StreamResampler::flush`] pushes out what the filter still holds so the total
//! length is `round(in_len * out_rate / in_rate)`.

use rubato::{
    Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

use super::AudioError;

/// Windowed-sinc length; 128 taps keeps the pass band flat to ~95 % of Nyquist.
const SINC_LEN: usize = 128;

/// Converts a stream of mono samples from one rate to another.
pub struct StreamResampler {
    from: u32,
    to: u32,
    inner: Option<Box<SincFixedIn<f32>>>,
    chunk: usize,
    pending: Vec<f32>,
    out_buf: Vec<Vec<f32>>,
    in_total: u64,
    out_total: u64,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (8 kHz to 192 kHz each).
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        for r in [from, to] {
            if !(8_000..=192_000).contains(&r) {
                return Err(AudioError::BadRate(r));
            }
        }
        let chunk = (from as usize / 100).max(1);
        let (inner, out_buf) = if from == to {
            (None, Vec::new())
        } else {
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: rubato::calculate_cutoff(SINC_LEN, WindowFunction::BlackmanHarris2),
                interpolation: SincInterpolationType::Cubic,
                oversampling_factor: 128,
                window: WindowFunction::BlackmanHarris2,
            };
            let r = SincFixedIn::<f32>::new(to as f64 / from as f64, 1.0, params, chunk, 1)
                .map_err(|e| AudioError::Decode(format!("resampler: {e}")))?;
            let out_buf = vec![vec![0.0; r.output_frames_max()]];
            (Some(Box::new(r)), out_buf)
        };
        Ok(StreamResampler {
            from,
            to,
            inner,
            chunk,
            pending: Vec::with_capacity(chunk * 2),
            out_buf,
            in_total: 0,
            out_total: 0,
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.from
    }

    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Feeds input samples, appending every output sample that is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.in_total += input.len() as u64;
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            self.out_total += input.len() as u64;
            return;
        };
        let mut rest = input;
        while !rest.is_empty() {
            let take = (self.chunk - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.chunk {
                let (_, n) = inner
                    .process_into_buffer(&[&self.pending], &mut self.out_buf, None)
                    .expect("buffers are sized from the resampler itself");
                self.pending.clear();
                out.extend_from_slice(&self.out_buf[0][..n]);
                self.out_total += n as u64;
            }
        }
    }

    /// The number of output samples the input so far should give in total.
    fn expected_total(&self) -> u64 {
        (self.in_total * self.to as u64 + self.from as u64 / 2) / self.from as u64
    }

    /// Ends the stream: pushes out what the filter still holds, so the total output length is
    /// `round(in_len * to / from)`. The resampler is ready for a new stream afterwards.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let target = self.expected_total();
        if let Some(inner) = self.inner.as_mut() {
            let zeros = vec![0.0f32; self.chunk];
            let mut guard = 0;
            while self.out_total < target && guard < 1000 {
                let missing = self.chunk - self.pending.len();
                self.pending.extend_from_slice(&zeros[..missing]);
                let (_, n) = inner
                    .process_into_buffer(&[&self.pending], &mut self.out_buf, None)
                    .expect("buffers are sized from the resampler itself");
                self.pending.clear();
                let take = ((target - self.out_total) as usize).min(n);
                out.extend_from_slice(&self.out_buf[0][..take]);
                self.out_total += take as u64;
                guard += 1;
            }
            inner.reset();
        }
        self.pending.clear();
        self.in_total = 0;
        self.out_total = 0;
    }
}

/// Resamples a whole signal in one call (same samples as streaming it).
pub fn resample_all(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    let mut r = StreamResampler::new(from, to)?;
    let mut out = Vec::with_capacity(input.len() * to as usize / from as usize + 16);
    r.push(input, &mut out);
    r.flush(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn output_length_is_right_for_every_rate_and_chunk_size() {
        for rate in [8_000u32, 16_000, 44_100, 48_000] {
            let input = sine(rate, 440.0, 1.37);
            let expected = (input.len() as f64 * 16_000.0 / rate as f64).round() as i64;
            for chunk_ms in [10usize, 20, 37] {
                let chunk = rate as usize * chunk_ms / 1000;
                let mut r = StreamResampler::new(rate, 16_000).unwrap();
                let mut out = Vec::new();
                for c in input.chunks(chunk) {
                    r.push(c, &mut out);
                }
                r.flush(&mut out);
                assert!(
                    (out.len() as i64 - expected).abs() <= 1,
                    "{rate} Hz in {chunk_ms} ms chunks: {} samples, expected {expected}",
                    out.len()
                );
                let one_call = resample_all(&input, rate, 16_000).unwrap();
                assert_eq!(
                    out, one_call,
                    "{rate} Hz in {chunk_ms} ms chunks differs from one call"
                );
            }
        }
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level() {
        // 440 Hz at 48 kHz → 16 kHz must still be a 440 Hz sine of the same level.
        let out = resample_all(&sine(48_000, 440.0, 1.0), 48_000, 16_000).unwrap();
        let reference = sine(16_000, 440.0, 1.0);
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let crossings = |v: &[f32]| {
            v.windows(2)
                .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                .count() as i64
        };
        let (o, r) = (&out[400..15_600], &reference[400..15_600]);
        assert!(
            (rms(o) / rms(r) - 1.0).abs() < 0.01,
            "level {} vs {}",
            rms(o),
            rms(r)
        );
        assert!(
            (crossings(o) - crossings(r)).abs() <= 1,
            "{} vs {}",
            crossings(o),
            crossings(r)
        );
        // Aligned to within one output sample (62.5 µs).
        let err: f32 = o
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.07, "max deviation {err}");
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        // A 6 kHz tone survives 48k → 16k; a 10 kHz tone (above 8 kHz) must not alias back in.
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let kept = resample_all(&sine(48_000, 6_000.0, 0.5), 48_000, 16_000).unwrap();
        let cut = resample_all(&sine(48_000, 10_000.0, 0.5), 48_000, 16_000).unwrap();
        assert!(
            rms(&kept[500..7500]) > 0.3,
            "pass band lost: {}",
            rms(&kept[500..7500])
        );
        assert!(
            rms(&cut[500..7500]) < 0.01,
            "aliasing: {}",
            rms(&cut[500..7500])
        );
    }

    #[test]
    fn an_impulse_stays_at_its_time() {
        for from in [8_000u32, 24_000, 44_100, 48_000] {
            let mut input = vec![0.0f32; from as usize];
            input[from as usize / 10] = 1.0; // at 100 ms
            let out = resample_all(&input, from, 16_000).unwrap();
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert!(
                (peak as i64 - 1600).abs() <= 1,
                "{from} Hz: impulse at {peak}, expected 1600"
            );
        }
    }

    #[test]
    fn rejects_unsupported_rates() {
        assert!(matches!(
            StreamResampler::new(0, 16_000),
            Err(AudioError::BadRate(0))
        ));
        assert!(StreamResampler::new(500_000, 16_000).is_err());
    }
}
