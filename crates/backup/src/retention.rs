//! Retention (restic's `forget --keep-*` rule): walking from the newest backup, each policy
//! keeps the newest backup of each of its last N periods that have one; a backup kept by any
//! policy stays. The default keeps three years.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl Default for Policy {
    /// A week of dailies, five weeklies, a year of monthlies, three yearlies.
    fn default() -> Self {
        Policy { keep_last: 3, keep_daily: 7, keep_weekly: 5, keep_monthly: 12, keep_yearly: 3 }
    }
}

/// Which backups (by index into `created_ms`, any order) the policy keeps.
pub fn keep(policy: &Policy, created_ms: &[u64]) -> BTreeSet<usize> {
    let mut order: Vec<usize> = (0..created_ms.len()).collect();
    order.sort_by(|a, b| created_ms[*b].cmp(&created_ms[*a]).then(b.cmp(a)));
    type Bucket = fn(time::Date) -> (i32, u32);
    let buckets: [(u32, Bucket); 4] = [
        (policy.keep_daily, |date| (date.year(), date.ordinal() as u32)),
        (policy.keep_weekly, |date| {
            let (year, week, _) = date.to_iso_week_date();
            (year, week as u32)
        }),
        (policy.keep_monthly, |date| (date.year(), date.month() as u32)),
        (policy.keep_yearly, |date| (date.year(), 0)),
    ];
    let mut kept = BTreeSet::new();
    for (position, index) in order.iter().enumerate() {
        if position < policy.keep_last as usize {
            kept.insert(*index);
        }
    }
    for (count, bucket) in buckets {
        let mut left = count;
        let mut last = None;
        for index in &order {
            if left == 0 {
                break;
            }
            let date = time::OffsetDateTime::from_unix_timestamp_nanos(created_ms[*index] as i128 * 1_000_000)
                .map(|at| at.date())
                .unwrap_or(time::Date::MIN);
            let key = bucket(date);
            if last != Some(key) {
                kept.insert(*index);
                left -= 1;
                last = Some(key);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const DAY_MS: u64 = 24 * 60 * 60 * 1000;

    #[test]
    fn four_years_of_dailies_keep_exactly_what_the_policy_says() {
        // One backup a day at 03:00 UTC from 2022-01-01 to 2025-12-31.
        let start = (datetime!(2022-01-01 03:00 UTC).unix_timestamp() as u64) * 1000;
        let end = (datetime!(2025-12-31 03:00 UTC).unix_timestamp() as u64) * 1000;
        let created: Vec<u64> = (0..).map(|day| start + day * DAY_MS).take_while(|at| *at <= end).collect();
        assert_eq!(created.len(), 1461);
        let kept = keep(&Policy::default(), &created);
        let dates: BTreeSet<String> = kept
            .iter()
            .map(|index| {
                time::OffsetDateTime::from_unix_timestamp((created[*index] / 1000) as i64).unwrap().date().to_string()
            })
            .collect();
        let expected: BTreeSet<String> = [
            // last 3 and 7 dailies: 2025-12-25 .. 2025-12-31
            "2025-12-25",
            "2025-12-26",
            "2025-12-27",
            "2025-12-28",
            "2025-12-29",
            "2025-12-30",
            "2025-12-31",
            // 5 weeklies: the newest of ISO weeks 2026-W01 (Mon 2025-12-29), 2025-W52, W51, W50, W49 (Sundays)
            "2025-12-28",
            "2025-12-21",
            "2025-12-14",
            "2025-12-07",
            // 12 monthlies: the last day of each month of 2025
            "2025-01-31",
            "2025-02-28",
            "2025-03-31",
            "2025-04-30",
            "2025-05-31",
            "2025-06-30",
            "2025-07-31",
            "2025-08-31",
            "2025-09-30",
            "2025-10-31",
            "2025-11-30",
            // 3 yearlies: the last day of 2025, 2024, 2023
            "2024-12-31",
            "2023-12-31",
        ]
        .iter()
        .map(|date| date.to_string())
        .collect();
        assert_eq!(dates, expected);
        assert_eq!(kept.len(), expected.len());
    }

    #[test]
    fn keep_last_alone_keeps_the_newest() {
        let policy = Policy { keep_last: 2, keep_daily: 0, keep_weekly: 0, keep_monthly: 0, keep_yearly: 0 };
        assert_eq!(keep(&policy, &[10, 30, 20]), BTreeSet::from([1, 2]));
        assert!(keep(&policy, &[]).is_empty());
    }
}
