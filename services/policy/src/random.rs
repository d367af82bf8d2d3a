//! A small, fast, seedable generator (SplitMix64): the simulator's traces and the agent's
//! simulated load need reproducible noise, not cryptographic randomness.

#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in (0, 1], never 0 (a logarithm's argument).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal, by Box-Muller.
    pub fn gaussian(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn draws_stay_in_their_ranges_and_repeat_with_the_seed() {
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        for _ in 0..10_000 {
            let (x, u) = (a.next_f64(), a.unit());
            assert!((0.0..1.0).contains(&x));
            assert!(u > 0.0 && u <= 1.0);
            assert!(a.gaussian().is_finite());
            assert_eq!((x, u), (b.next_f64(), b.unit()));
            b.gaussian();
        }
    }
}
