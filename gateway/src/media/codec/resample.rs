//! Sample-rate conversion of 20 ms frames between 8, 16 and 48 kHz with `rubato` (the resampler
//! the product specifies): a windowed-sinc resampler with a fixed input chunk of one frame, whose
//! anti-aliasing filter is what keeps energy above 4 kHz out of a G.711 leg. Its output count may
//! differ by a sample from one call to the next (a non-integer ratio such as 1/3 rounds), so the
//! output goes through a small FIFO that hands out whole frames.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler as _, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::frame_samples;

/// Resamples a stream of 20 ms mono frames from one rate to another.
pub struct Resampler {
    inner: Async<f32>,
    from: u32,
    to: u32,
    input: Vec<f32>,
    output: Vec<f32>,
    fifo: VecDeque<i16>,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz for 20 ms frames; `None` when the rates are equal
    /// (nothing to do) or a rate is zero.
    pub fn new(from: u32, to: u32) -> Option<Resampler> {
        if from == to || from == 0 || to == 0 {
            return None;
        }
        // 64 taps: ~4 µs a frame, stop band well below what G.711 quantisation keeps.
        let mut params = SincInterpolationParameters::new(64, WindowFunction::BlackmanHarris2);
        params.oversampling_factor = 128;
        params.interpolation = SincInterpolationType::Linear;
        let chunk = frame_samples(from);
        let inner = Async::<f32>::new_sinc(
            f64::from(to) / f64::from(from),
            1.0,
            &params,
            chunk,
            1,
            FixedAsync::Input,
        )
        .ok()?;
        let out_max = inner.output_frames_max();
        Some(Resampler {
            inner,
            from,
            to,
            input: vec![0.0; chunk],
            output: vec![0.0; out_max],
            fifo: VecDeque::with_capacity(2 * frame_samples(to)),
        })
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Resamples one frame (`frame_samples(from)` samples; shorter is padded with silence, longer
    /// cut) and appends one frame at the output rate to `out`.
    pub fn process(&mut self, frame: &[i16], out: &mut Vec<i16>) {
        let chunk = self.input.len();
        for (i, x) in self.input.iter_mut().enumerate() {
            *x = frame.get(i).map_or(0.0, |&s| f32::from(s) / 32768.0);
        }
        let out_max = self.output.len();
        let produced = match (
            InterleavedSlice::new(&self.input[..], 1, chunk),
            InterleavedSlice::new_mut(&mut self.output[..], 1, out_max),
        ) {
            (Ok(inp), Ok(mut outp)) => self
                .inner
                .process_into_buffer(&inp, &mut outp, None)
                .map_or(0, |(_, n)| n),
            _ => 0,
        };
        self.fifo.extend(
            self.output
                .iter()
                .take(produced)
                .map(|&s| super::f32_to_i16(s)),
        );
        let want = frame_samples(self.to);
        // Keep the FIFO from drifting: a deficit is padded with the last sample, an excess of
        // more than a frame is dropped (the resampler's delay stays inside one frame).
        while self.fifo.len() > 2 * want {
            self.fifo.pop_front();
        }
        let n = want.min(self.fifo.len());
        out.extend(self.fifo.drain(..n));
        let last = out.last().copied().unwrap_or(0);
        out.resize(out.len() + (want - n), last);
    }
}
