//! Protocols side by side in a `bench http` run: at each concurrency, each protocol's median
//! requests/s over the rounds, and its ratio to the first protocol's within each round (the
//! two measured minutes apart at most, on the same machine state), with the median and range
//! of those ratios; and the order the levels run in, so that neither protocol always runs
//! first. Pure: the levels in, a text block out.

use std::collections::BTreeMap;

use super::load::LevelReport;
use super::load_proto::Protocol;

/// One protocol at one concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Connections.
    pub concurrency: usize,
    /// The protocol.
    pub protocol: Protocol,
    /// Median requests/s over the rounds.
    pub median_per_s: f64,
    /// Its requests/s ÷ the first protocol's, round by round, in round order.
    pub ratios: Vec<f64>,
}

/// The levels of a run, in the order they run: `(protocol, round, concurrency)`. Each round
/// goes through the concurrency levels, and at each level the protocols take turns: in the
/// order given in odd rounds, reversed in even ones, so that what running first or second
/// does to a level (a connection just opened, the controller's last move) falls on each
/// protocol alike over two rounds.
pub fn schedule(
    rounds: usize,
    concurrency: &[usize],
    protocols: &[Protocol],
) -> Vec<(Protocol, usize, usize)> {
    let mut out = Vec::new();
    for round in 1..=rounds.max(1) {
        for &c in concurrency {
            let mut turn = protocols.to_vec();
            if round % 2 == 0 {
                turn.reverse();
            }
            out.extend(turn.into_iter().map(|p| (p, round, c)));
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Every protocol but the first, against the first, per concurrency; the first protocol is
/// the one the first level ran. Empty when only one protocol ran.
pub fn compare(levels: &[LevelReport]) -> Vec<Comparison> {
    let Some(base) = levels.first().map(|l| l.protocol) else {
        return Vec::new();
    };
    // (concurrency, protocol order, round) -> requests/s
    let mut order: Vec<Protocol> = Vec::new();
    let mut rate: BTreeMap<(usize, usize, usize), f64> = BTreeMap::new();
    for l in levels {
        let i = match order.iter().position(|&p| p == l.protocol) {
            Some(i) => i,
            None => {
                order.push(l.protocol);
                order.len() - 1
            }
        };
        rate.insert((l.concurrency, i, l.round), l.requests_per_s);
    }
    let mut concurrencies: Vec<usize> = levels.iter().map(|l| l.concurrency).collect();
    concurrencies.dedup();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    let mut out = Vec::new();
    for c in concurrencies {
        for (i, &p) in order.iter().enumerate().skip(1) {
            let mine: Vec<(usize, f64)> = rate
                .range((c, i, 0)..=(c, i, usize::MAX))
                .map(|(&(_, _, round), &v)| (round, v))
                .collect();
            let ratios = mine
                .iter()
                .filter_map(|&(round, v)| {
                    let b = *rate.get(&(c, 0, round))?;
                    (b > 0.0).then_some(v / b)
                })
                .collect();
            out.push(Comparison {
                concurrency: c,
                protocol: p,
                median_per_s: median(mine.iter().map(|&(_, v)| v).collect()),
                ratios,
            });
        }
    }
    debug_assert!(out.iter().all(|c| c.protocol != base));
    out
}

/// The comparison as text, with each protocol's median rate; empty for one protocol.
pub fn render(levels: &[LevelReport]) -> String {
    let cmp = compare(levels);
    let Some(base) = levels.first().map(|l| l.protocol) else {
        return String::new();
    };
    if cmp.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nagainst {} (requests/s ratio within each round; median [range] over rounds):\n",
        base.as_str()
    );
    for c in &cmp {
        let at = |p: Protocol| {
            levels
                .iter()
                .filter(move |l| l.protocol == p && l.concurrency == c.concurrency)
        };
        let base_median = median(at(base).map(|l| l.requests_per_s).collect());
        let lo = c.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = c.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push_str(&format!(
            "  concurrency {:>3}: {} {:.0}/s vs {} {:.0}/s, ratio {:.2}x [{:.2}-{:.2}] over {} round(s)",
            c.concurrency,
            c.protocol.as_str(),
            c.median_per_s,
            base.as_str(),
            base_median,
            median(c.ratios.clone()),
            lo,
            hi,
            c.ratios.len()
        ));
        let cpu = |p: Protocol, of: fn(&LevelReport) -> Option<f64>| {
            let v: Vec<f64> = at(p).filter_map(of).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let daemon = |l: &LevelReport| l.daemon_cpu_us_per_request;
        if let (Some(mine), Some(theirs)) = (cpu(c.protocol, daemon), cpu(base, daemon)) {
            out.push_str(&format!(
                "; daemon CPU per request {mine:.1} vs {theirs:.1} us ({:.2}x)",
                mine / theirs
            ));
        }
        let client = |l: &LevelReport| l.client_cpu_us_per_request;
        if let (Some(mine), Some(theirs)) = (cpu(c.protocol, client), cpu(base, client)) {
            out.push_str(&format!(
                ", the client's {mine:.1} vs {theirs:.1} us ({:.2}x)",
                mine / theirs
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::load::LatencyMs;

    #[test]
    fn protocols_take_turns_in_the_given_order_then_reversed() {
        use Protocol::{Binary, Grpc};
        assert_eq!(
            schedule(3, &[1, 4], &[Binary, Grpc]),
            vec![
                (Binary, 1, 1),
                (Grpc, 1, 1),
                (Binary, 1, 4),
                (Grpc, 1, 4),
                (Grpc, 2, 1),
                (Binary, 2, 1),
                (Grpc, 2, 4),
                (Binary, 2, 4),
                (Binary, 3, 1),
                (Grpc, 3, 1),
                (Binary, 3, 4),
                (Grpc, 3, 4),
            ]
        );
        assert_eq!(
            schedule(0, &[16], &[Grpc]),
            vec![(Grpc, 1, 16)],
            "one round at least"
        );
    }

    fn level(protocol: Protocol, round: usize, concurrency: usize, per_s: f64) -> LevelReport {
        LevelReport {
            protocol,
            round,
            concurrency,
            requests: per_s as u64,
            requests_per_s: per_s,
            latency_ms: LatencyMs::default(),
            errors: Default::default(),
            error_count: 0,
            batches: None,
            mean_batch_size: None,
            batch_sizes: Default::default(),
            compute_only_rows_per_s: None,
            compute_only_rows_per_s_mix: None,
            ratio: None,
            daemon_cpu_us_per_request: Some(1e6 / per_s),
            client_cpu_us_per_request: Some(5e5 / per_s),
        }
    }

    #[test]
    fn ratios_are_taken_within_each_round_against_the_first_protocol() {
        use Protocol::{Binary, Grpc};
        let levels = vec![
            level(Binary, 1, 1, 1000.0),
            level(Grpc, 1, 1, 1100.0),
            level(Binary, 1, 4, 2000.0),
            level(Grpc, 1, 4, 1800.0),
            // A slower second round: the ratio, not the rate, is what is compared.
            level(Binary, 2, 1, 500.0),
            level(Grpc, 2, 1, 600.0),
            level(Binary, 2, 4, 1000.0),
            level(Grpc, 2, 4, 1000.0),
        ];
        let cmp = compare(&levels);
        assert_eq!(cmp.len(), 2);
        assert_eq!((cmp[0].concurrency, cmp[0].protocol), (1, Grpc));
        assert_eq!(cmp[0].ratios.len(), 2);
        assert!((cmp[0].ratios[0] - 1.1).abs() < 1e-12 && (cmp[0].ratios[1] - 1.2).abs() < 1e-12);
        assert!((cmp[0].median_per_s - 850.0).abs() < 1e-9);
        assert!((cmp[1].ratios[0] - 0.9).abs() < 1e-12 && (cmp[1].ratios[1] - 1.0).abs() < 1e-12);
        let text = render(&levels);
        assert!(text.contains("against binary"), "{text}");
        assert!(text.contains("concurrency   1: grpc 850/s vs binary 750/s, ratio 1.15x [1.10-1.20] over 2 round(s)"), "{text}");
        // The daemon's CPU per request, median over the rounds (the fixture's is 1e6/rate).
        let want = format!(
            "; daemon CPU per request {:.1} vs {:.1} us",
            (1e6 / 1100.0 + 1e6 / 600.0) / 2.0,
            (1e6 / 1000.0 + 1e6 / 500.0) / 2.0
        );
        assert!(text.contains(&want), "{text}");
        // And the client's, from its own field (the fixture's is 5e5/rate).
        let want = format!(
            ", the client's {:.1} vs {:.1} us (0.86x)",
            (5e5 / 1100.0 + 5e5 / 600.0) / 2.0,
            (5e5 / 1000.0 + 5e5 / 500.0) / 2.0
        );
        assert!(text.contains(&want), "{text}");
    }

    #[test]
    fn one_protocol_has_nothing_to_compare() {
        let levels = vec![
            level(Protocol::Json, 1, 1, 10.0),
            level(Protocol::Json, 2, 1, 12.0),
        ];
        assert!(compare(&levels).is_empty());
        assert_eq!(render(&levels), "");
        assert_eq!(render(&[]), "");
    }
}
