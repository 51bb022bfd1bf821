//! Aggregate mode's user-space half: the kernel's lifetime buckets, chosen
//! so every exporter's buckets are sums of them, and the per-slot totals
//! last read, from which each export's deltas are taken.

use super::{Site, SiteDelta};
use agent_common::{Bucket, LIFETIME_BUCKETS, LifetimeBounds, SiteKey, SiteLifetimes, SiteTotals};
use std::sync::Arc;

/// A bucket bound of `secs` seconds in ns: lifetimes are whole ns, so
/// "<= floor(b)" is "<= b".
pub fn bound_ns(secs: f64) -> u64 {
    (secs * 1e9).floor() as u64
}

/// The kernel's bucket bounds: the union of the exporters' bounds (in
/// seconds), in ns. Fails if there are more than the kernel holds.
pub fn lifetime_bounds(sets: &[&[f64]]) -> Result<LifetimeBounds, usize> {
    let mut ns: Vec<u64> = sets
        .iter()
        .flat_map(|s| s.iter())
        .filter(|b| b.is_finite() && **b > 0.0)
        .map(|&b| bound_ns(b))
        .collect();
    ns.sort_unstable();
    ns.dedup();
    if ns.len() > LIFETIME_BUCKETS - 1 {
        return Err(ns.len());
    }
    let mut out = LifetimeBounds {
        len: ns.len() as u32,
        _pad: 0,
        ns: [0; LIFETIME_BUCKETS - 1],
    };
    out.ns[..ns.len()].copy_from_slice(&ns);
    Ok(out)
}

/// One kernel site slot as user space knows it.
pub struct Slot {
    pub key: SiteKey,
    /// Symbolized once its process is known (`None`: not yet, or never:
    /// a process the target does not admit).
    pub site: Option<Arc<Site>>,
    last: SiteTotals,
    /// Allocated once the site has exits.
    last_lifetimes: Option<Box<SiteLifetimes>>,
}

impl Slot {
    pub fn new(key: SiteKey, site: Option<Arc<Site>>) -> Self {
        Slot {
            key,
            site,
            last: SiteTotals::default(),
            last_lifetimes: None,
        }
    }

    /// Goroutines created at this site and not exited, as last read.
    pub fn live(&self) -> i64 {
        self.last.created as i64 - self.last.exited as i64
    }

    /// Takes what grew without reporting it (a process not admitted);
    /// returns how many creations and exits that was.
    pub fn skip(&mut self, now: SiteTotals) -> u64 {
        let n =
            now.created.wrapping_sub(self.last.created) + now.exited.wrapping_sub(self.last.exited);
        self.last = now;
        n
    }

    /// Calls `f` with what grew since the last call (if anything did).
    /// The lifetime buckets are read (`lifetimes`) only if exits grew;
    /// `buf` is reused scratch space for the bucket list.
    pub fn take_delta(
        &mut self,
        now: SiteTotals,
        lifetimes: impl FnOnce() -> Option<SiteLifetimes>,
        bounds: &[u64],
        buf: &mut Vec<(usize, Bucket)>,
        f: impl FnOnce(&SiteDelta),
    ) {
        let last = self.last;
        if now == last {
            return;
        }
        buf.clear();
        if now.exited != last.exited
            && let Some(now_l) = lifetimes()
        {
            let last_l = self.last_lifetimes.get_or_insert_with(Box::default);
            for (i, (n, l)) in now_l.buckets.iter().zip(&last_l.buckets).enumerate() {
                if n.count != l.count {
                    buf.push((
                        i,
                        Bucket {
                            count: n.count.wrapping_sub(l.count),
                            sum_ns: n.sum_ns.wrapping_sub(l.sum_ns),
                        },
                    ));
                }
            }
            **last_l = now_l;
        }
        f(&SiteDelta {
            created: now.created.wrapping_sub(last.created),
            exited: now.exited.wrapping_sub(last.exited),
            buckets: buf,
            bounds,
        });
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_union_in_ns() {
        let b = lifetime_bounds(&[&[1.0, 3.0], &[0.001, 1.0, 0.5], &[2f64.powi(-10)]]).unwrap();
        assert_eq!(
            &b.ns[..b.len as usize],
            &[
                976_562,
                1_000_000,
                500_000_000,
                1_000_000_000,
                3_000_000_000
            ]
        );
        // Inclusive upper bounds, as Prometheus' le and OTLP's buckets.
        assert_eq!(b.bucket(1_000_000_000), 3);
        assert_eq!(b.bucket(1_000_000_001), 4);
        assert_eq!(b.bucket(976_562), 0);
        assert_eq!(b.bucket(976_563), 1);
        assert_eq!(b.bucket(u64::MAX), 5);
        let many: Vec<f64> = (1..=64).map(f64::from).collect();
        assert_eq!(lifetime_bounds(&[&many]).unwrap_err(), 64);
    }

    #[test]
    fn deltas_are_what_grew() {
        let mut slot = Slot::new(SiteKey::default(), None);
        let mut now = SiteTotals {
            created: 5,
            exited: 2,
        };
        let mut lt = SiteLifetimes::default();
        lt.buckets[3] = Bucket {
            count: 2,
            sum_ns: 70,
        };
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        let bounds = [10, 20, 30];
        slot.take_delta(
            now,
            || Some(lt),
            &bounds,
            &mut buf,
            |d| seen.push((d.created, d.exited, d.buckets.to_vec())),
        );
        // Only creations: the buckets are not read.
        now.created = 6;
        slot.take_delta(
            now,
            || panic!("read"),
            &bounds,
            &mut buf,
            |d| seen.push((d.created, d.exited, d.buckets.to_vec())),
        );
        now.exited = 3;
        lt.buckets[1] = Bucket {
            count: 1,
            sum_ns: 15,
        };
        slot.take_delta(
            now,
            || Some(lt),
            &bounds,
            &mut buf,
            |d| seen.push((d.created, d.exited, d.buckets.to_vec())),
        );
        // Nothing new: no call.
        slot.take_delta(
            now,
            || panic!("read"),
            &bounds,
            &mut buf,
            |_| panic!("no delta"),
        );
        let b = |count, sum_ns| Bucket { count, sum_ns };
        assert_eq!(
            seen,
            vec![
                (5, 2, vec![(3, b(2, 70))]),
                (1, 0, vec![]),
                (0, 1, vec![(1, b(1, 15))])
            ]
        );
        assert_eq!(slot.live(), 3);
    }
}
