//! The number format of a backend's GEMM operands: `f32`, or `bf16` with f32 accumulation
//! (mixed precision: the master weights, activations, gradients and optimiser state stay
//! f32; only what goes into a matrix product is rounded to bf16).
//!
//! On a GPU with bf16 tensor cores (sm_80 and newer) bf16 runs `gemm_bf16` on them. The CPU
//! backend emulates it: it rounds both operands to bf16 exactly as `f32_to_bf16` does (to
//! nearest, ties to even) and multiplies them in f32, so that a bf16 run's accuracy can be
//! checked in CI against an f32 run.
//!
//! The default ([`super::Backend::default_precision`]) depends on the work: training on a GPU
//! with tensor cores gets bf16 (on an H200 it trained 784-2048-2048-10 at batch 256 1.33x as
//! fast as f32, 784-4096-4096-10 at batch 1024 2.3x), serving gets f32 everywhere (bf16
//! converts the weights on every GEMM, which at batch 1 made a service on green contexts
//! slower than f32: p50 0.227 against 0.196 ms), and the CPU, which only emulates bf16,
//! f32 for both.

use serde::{Deserialize, Serialize};

/// What a backend's work is, for its default precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A training job (and a service's warm-up training).
    Training,
    /// An inference service's batches.
    Serving,
}

/// The number format of GEMM operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands.
    #[default]
    F32,
    /// bf16 operands (8 bits of mantissa), f32 accumulation and output.
    Bf16,
}

impl Precision {
    /// The spelling of the config, the API and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Its code in a backend's atomic setting.
    pub(crate) fn code(self) -> u8 {
        match self {
            Precision::F32 => 0,
            Precision::Bf16 => 1,
        }
    }

    /// The precision of a code from [`Precision::code`].
    pub(crate) fn from_code(code: u8) -> Self {
        if code == 1 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32: what `f32_to_bf16` then
/// `bf16_to_f32` give on the GPU. NaN stays NaN; infinities and values past bf16's range
/// round to infinity as IEEE rounding does.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// A copy of `v` with every element rounded to bf16.
pub(crate) fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round_bf16(x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_keeps_eight_bits_of_mantissa_ties_to_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even, 1.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even, 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        // Just above halfway rounds up.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round_bf16(-3.140625), -3.140625);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        // Half a unit in the last place: at most 2^-8 of the value (7 stored bits).
        for i in 1..10_000 {
            let x = i as f32 * 0.123_457;
            assert!((round_bf16(x) - x).abs() <= x * (1.0 / 256.0), "{x}");
        }
    }

    #[test]
    fn names_and_codes_read_back() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(Precision::from_code(p.code()), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
        }
    }
}
