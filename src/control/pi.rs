//! The incremental (velocity-form) PI controller the tenants' share loops use.
//!
//! `u_k = sat(u_{k-1} + Kp·(e_k − e_{k-1}) + Ki·e_k)`, with `e` the normalised error and `u`
//! the controller's contribution to a share. In velocity form the integrator *is* the output,
//! so clamping the output to its limits is the anti-windup: the state never runs beyond what
//! the actuator can do, and the loop recovers from saturation at once when the error turns.

/// Gains of a PI loop, per control period.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PiGains {
    /// Proportional gain on the change of error.
    pub kp: f64,
    /// Integral gain on the error.
    pub ki: f64,
}

/// State of one PI loop.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pi {
    /// The output of the last step.
    pub u: f64,
    /// The error of the last step.
    pub prev_e: f64,
    started: bool,
}

impl Pi {
    /// A loop whose output starts at `u`.
    pub fn new(u: f64) -> Self {
        Pi {
            u,
            prev_e: 0.0,
            started: false,
        }
    }

    /// One step with error `e`, output limited to `[lo, hi]`. The first step has no previous
    /// error, so its proportional part is `Kp·e`.
    pub fn step(&mut self, gains: PiGains, e: f64, lo: f64, hi: f64) -> f64 {
        let de = if self.started { e - self.prev_e } else { e };
        self.started = true;
        self.prev_e = e;
        let u = self.u + gains.kp * de + gains.ki * e;
        self.u = if lo <= hi { u.clamp(lo, hi) } else { lo };
        self.u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: PiGains = PiGains { kp: 0.5, ki: 0.2 };

    #[test]
    fn constant_error_integrates_and_saturates_without_windup() {
        let mut pi = Pi::new(0.0);
        let mut last = 0.0;
        for _ in 0..10 {
            let u = pi.step(G, 1.0, -1.0, 1.0);
            assert!(u >= last);
            last = u;
        }
        assert_eq!(last, 1.0, "saturated at the upper limit");
        // The error reverses: the output leaves saturation on the first step, because the
        // state was held at the limit rather than integrating beyond it.
        let u = pi.step(G, -1.0, -1.0, 1.0);
        assert!(u < 1.0, "{u}");
    }

    #[test]
    fn zero_error_holds_the_output() {
        let mut pi = Pi::new(0.3);
        pi.step(G, 0.0, 0.0, 1.0);
        assert_eq!(pi.step(G, 0.0, 0.0, 1.0), 0.3);
    }
}
