//! Choosing the binding window, exactly as the scripts do.
//!
//! Denied: the denying window that waits longest. Allowed: the window with the fewest permits
//! left, and on a tie the one that takes longer to refill.

#[derive(Debug, Default)]
pub(super) struct Binding {
    best: Option<Candidate>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    pub(super) index: usize,
    pub(super) remaining: u64,
    pub(super) reset_after_us: u64,
    pub(super) retry_after_us: u64,
}

impl Binding {
    pub(super) fn consider(&mut self, allowed: bool, c: Candidate) {
        let better = match &self.best {
            None => true,
            Some(b) if !allowed => c.retry_after_us > b.retry_after_us,
            Some(b) => {
                c.remaining < b.remaining
                    || (c.remaining == b.remaining && c.reset_after_us > b.reset_after_us)
            }
        };
        if better {
            self.best = Some(c);
        }
    }

    pub(super) fn verdict(self, allowed: bool, expires_at_us: u64) -> super::Verdict {
        let best = self.best.unwrap_or(Candidate {
            index: 0,
            remaining: 0,
            reset_after_us: 0,
            retry_after_us: 0,
        });
        super::Verdict {
            allowed,
            window_index: best.index,
            remaining: best.remaining,
            reset_after_us: best.reset_after_us,
            retry_after_us: best.retry_after_us,
            expires_at_us,
        }
    }
}
