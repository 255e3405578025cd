//! Which host should run a connector instance: rendezvous (highest random
//! weight) hashing. Each host scores every instance against every live
//! host and the best score wins, so every host agrees given the same
//! listing, a host that leaves moves only the instances it ran, and a host
//! that joins takes only those it now scores best on (about `1/n` of them).

/// The host that should run `unit` (a connector instance's key), among
/// `hosts`; `None` if there is none.
pub fn owner<'h>(hosts: impl IntoIterator<Item = &'h str>, unit: &str) -> Option<&'h str> {
    hosts
        .into_iter()
        .max_by_key(|host| (score(host, unit), *host))
}

/// A stable 64-bit score of a (host, unit) pair: FNV-1a over both, then
/// SplitMix64's finalizer so that near names give unrelated scores. Not
/// `std`'s hasher: every host of a cluster, whatever its build, must agree.
fn score(host: &str, unit: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes().chain([0xff]).chain(unit.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn units() -> Vec<String> {
        (0..300)
            .map(|i| format!("connector-{}/{}", i / 3, i % 3))
            .collect()
    }

    #[test]
    fn instances_spread_over_the_hosts_and_every_host_agrees() {
        let hosts = ["a", "b", "c"];
        let mut counts = [0usize; 3];
        for unit in units() {
            let o = owner(hosts, &unit).unwrap();
            // Order of the listing does not matter.
            assert_eq!(owner(["c", "a", "b"], &unit), Some(o));
            counts[hosts.iter().position(|h| *h == o).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 70), "{counts:?}");
        assert_eq!(owner(std::iter::empty(), "x/0"), None);
    }

    #[test]
    fn a_host_leaving_moves_only_its_own_instances_and_joining_takes_about_a_share() {
        let before = ["a", "b", "c"];
        let after = ["a", "b"];
        let mut moved = 0;
        for unit in units() {
            let was = owner(before, &unit).unwrap();
            let now = owner(after, &unit).unwrap();
            if was != "c" {
                assert_eq!(was, now, "{unit} moved though its host stayed");
            } else {
                moved += 1;
            }
            // Joining is leaving backwards: c takes exactly what it had.
        }
        assert!((70..130).contains(&moved), "{moved}");
    }
}
