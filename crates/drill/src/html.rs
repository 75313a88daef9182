//! `report.html`: one section per scenario with its targets, its figures and a timeline chart
//! (requests per second by outcome with the success rate, and latency, the fault window
//! shaded), drawn as inline SVG on the server: no script, no network, readable on a phone.

use crate::figures::{Bucket, TIMELINE_BUCKET_MS};
use crate::report::{Outcome, Report, ScenarioReport};
use askama::Template;

const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 56.0;
const MARGIN_RIGHT: f64 = 56.0;
/// Room above the plot for the axes' names.
const MARGIN_TOP: f64 = 28.0;
const MARGIN_BOTTOM: f64 = 34.0;
/// X-axis ticks at most.
const X_TICKS_MAX: f64 = 10.0;

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    report: &'a Report,
    verdict: &'static str,
    scenarios: Vec<ScenarioView<'a>>,
}

struct ScenarioView<'a> {
    s: &'a ScenarioReport,
    outcome: &'static str,
    rows: Vec<(String, String)>,
    requests_chart: Option<Chart>,
    latency_chart: Option<Chart>,
    buckets: Vec<BucketRow>,
}

struct BucketRow {
    from: String,
    succeeded: u32,
    failed: u32,
    rate: String,
    p50: String,
    p99: String,
    queue: String,
}

/// One SVG chart, geometry computed here so the template only places it.
struct Chart {
    id: String,
    title: String,
    description: String,
    width: f64,
    height: f64,
    plot_bottom: f64,
    plot_left: f64,
    plot_right: f64,
    shade: Option<Rect>,
    bars: Vec<Rect>,
    lines: Vec<Line>,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    y_right_ticks: Vec<Tick>,
    y_label: String,
    y_right_label: String,
}

struct Rect {
    x: String,
    y: String,
    width: String,
    height: String,
    class: &'static str,
}

struct Line {
    points: String,
    class: &'static str,
}

struct Tick {
    at: String,
    label: String,
}

fn number(value: f64) -> String {
    format!("{value:.1}")
}

fn optional_ms(value: Option<u32>) -> String {
    value.map_or("–".to_string(), |ms| format!("{ms} ms"))
}

fn seconds(value: Option<f64>) -> String {
    crate::report::seconds(value)
}

/// A round number at or above `value` (1, 2 or 5 times a power of ten).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 1.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|step| step * power).find(|nice| *nice >= value).unwrap_or(10.0 * power)
}

struct Frame {
    total_seconds: f64,
}

impl Frame {
    fn plot_width(&self) -> f64 {
        CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    }

    fn plot_height(&self) -> f64 {
        CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    }

    fn x(&self, seconds: f64) -> f64 {
        MARGIN_LEFT + (seconds / self.total_seconds).clamp(0.0, 1.0) * self.plot_width()
    }

    /// `fraction` of the plot's height from its bottom.
    fn y(&self, fraction: f64) -> f64 {
        MARGIN_TOP + (1.0 - fraction.clamp(0.0, 1.0)) * self.plot_height()
    }

    fn x_ticks(&self) -> Vec<Tick> {
        let step = nice_ceiling(self.total_seconds / X_TICKS_MAX);
        let count = (self.total_seconds / step).floor() as usize;
        (0..=count)
            .map(|index| {
                let at = index as f64 * step;
                Tick { at: number(self.x(at)), label: format!("{at:.0} s") }
            })
            .collect()
    }

    fn shade(&self, scenario: &ScenarioReport) -> Option<Rect> {
        let fault = scenario.fault.as_ref()?;
        let from = self.x(fault.at_seconds);
        let to = self.x(fault.healed_at_seconds.max(fault.at_seconds)).max(from + 2.0);
        Some(Rect {
            x: number(from),
            y: number(MARGIN_TOP),
            width: number(to - from),
            height: number(self.plot_height()),
            class: "fault",
        })
    }
}

fn requests_chart(scenario: &ScenarioReport, buckets: &[Bucket]) -> Chart {
    let bucket_seconds = f64::from(TIMELINE_BUCKET_MS) / 1000.0;
    let frame = Frame { total_seconds: (buckets.len() as f64 * bucket_seconds).max(bucket_seconds) };
    let per_second = |count: u32| f64::from(count) / bucket_seconds;
    let peak = buckets.iter().map(|bucket| per_second(bucket.succeeded + bucket.failed)).fold(0.0, f64::max);
    let top = nice_ceiling(peak);
    let bar_width = (frame.plot_width() / buckets.len().max(1) as f64 - 1.0).max(1.0);
    let mut bars = Vec::new();
    let mut rate_points = Vec::new();
    let mut lowest: Option<(f64, f64)> = None;
    for bucket in buckets {
        let x = frame.x(bucket.from_seconds);
        let succeeded_top = frame.y(per_second(bucket.succeeded) / top);
        let all_top = frame.y(per_second(bucket.succeeded + bucket.failed) / top);
        let bottom = frame.y(0.0);
        if bucket.succeeded > 0 {
            bars.push(Rect {
                x: number(x),
                y: number(succeeded_top),
                width: number(bar_width),
                height: number(bottom - succeeded_top),
                class: "succeeded",
            });
        }
        if bucket.failed > 0 {
            bars.push(Rect {
                x: number(x),
                y: number(all_top),
                width: number(bar_width),
                height: number(succeeded_top - all_top),
                class: "failed",
            });
        }
        let total = bucket.succeeded + bucket.failed;
        if total > 0 {
            let rate = f64::from(bucket.succeeded) / f64::from(total);
            rate_points.push(format!("{},{}", number(x + bar_width / 2.0), number(frame.y(rate))));
            if lowest.is_none_or(|(lowest_rate, _)| rate < lowest_rate) {
                lowest = Some((rate, bucket.from_seconds));
            }
        }
    }
    let y_ticks = [0.0, 0.5, 1.0]
        .iter()
        .map(|fraction| Tick { at: number(frame.y(*fraction)), label: format!("{:.0}", top * fraction) })
        .collect();
    let y_right_ticks = [0.0, 0.5, 1.0]
        .iter()
        .map(|fraction| Tick { at: number(frame.y(*fraction)), label: format!("{:.0}%", fraction * 100.0) })
        .collect();
    let requests: u32 = buckets.iter().map(|bucket| bucket.succeeded + bucket.failed).sum();
    let failed: u32 = buckets.iter().map(|bucket| bucket.failed).sum();
    let mut description = format!(
        "{requests} requests over {:.0} s, {failed} failed; at most {peak:.0} per second.",
        frame.total_seconds
    );
    if let Some(fault) = &scenario.fault {
        description
            .push_str(&format!(" Fault from {:.1} s to {:.1} s (shaded).", fault.at_seconds, fault.healed_at_seconds));
    }
    if let Some((rate, at)) = lowest {
        description.push_str(&format!(" Lowest success rate {:.1}% at {at:.1} s.", rate * 100.0));
    }
    if let Some(rto) = &scenario.rto {
        description.push_str(&format!(" RTO {}.", seconds(rto.seconds)));
    }
    Chart {
        id: format!("requests-{}", scenario.name),
        title: format!("{}: requests per second by outcome, and the success rate", scenario.name),
        description,
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        plot_bottom: frame.y(0.0),
        plot_left: MARGIN_LEFT,
        plot_right: CHART_WIDTH - MARGIN_RIGHT,
        shade: frame.shade(scenario),
        bars,
        lines: vec![Line { points: rate_points.join(" "), class: "rate" }],
        x_ticks: frame.x_ticks(),
        y_ticks,
        y_right_ticks,
        y_label: "requests/s".into(),
        y_right_label: "success".into(),
    }
}

fn latency_chart(scenario: &ScenarioReport, buckets: &[Bucket]) -> Chart {
    let bucket_seconds = f64::from(TIMELINE_BUCKET_MS) / 1000.0;
    let frame = Frame { total_seconds: (buckets.len() as f64 * bucket_seconds).max(bucket_seconds) };
    let highest = buckets.iter().filter_map(|bucket| bucket.p99_ms).max().unwrap_or(1).max(10);
    // Log scale from 1 ms to the next power of ten above the highest p99.
    let decades = (f64::from(highest)).log10().ceil().max(1.0);
    let y_of = |ms: u32| frame.y(f64::from(ms.max(1)).log10() / decades);
    let bar_width = frame.plot_width() / buckets.len().max(1) as f64;
    let line = |pick: fn(&Bucket) -> Option<u32>| {
        buckets
            .iter()
            .filter_map(|bucket| {
                pick(bucket).map(|ms| {
                    format!("{},{}", number(frame.x(bucket.from_seconds) + bar_width / 2.0), number(y_of(ms)))
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let y_ticks = (0..=decades as u32)
        .map(|power| {
            let ms = 10u32.pow(power);
            let label = if ms >= 1000 { format!("{} s", ms / 1000) } else { format!("{ms} ms") };
            Tick { at: number(y_of(ms)), label }
        })
        .collect();
    let during = scenario.latency_ms.as_ref().map(|phases| &phases.during);
    let description = format!(
        "Latency per half second, p50 and p99, log scale. While the fault was held: p50 {}, p99 {}; highest p99 of a half second {highest} ms.",
        optional_ms(during.and_then(|latency| latency.p50_ms)),
        optional_ms(during.and_then(|latency| latency.p99_ms)),
    );
    Chart {
        id: format!("latency-{}", scenario.name),
        title: format!("{}: latency (p50 and p99)", scenario.name),
        description,
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        plot_bottom: frame.y(0.0),
        plot_left: MARGIN_LEFT,
        plot_right: CHART_WIDTH - MARGIN_RIGHT,
        shade: frame.shade(scenario),
        bars: Vec::new(),
        lines: vec![
            Line { points: line(|bucket| bucket.p50_ms), class: "p50" },
            Line { points: line(|bucket| bucket.p99_ms), class: "p99" },
        ],
        x_ticks: frame.x_ticks(),
        y_ticks,
        y_right_ticks: Vec::new(),
        y_label: "latency".into(),
        y_right_label: String::new(),
    }
}

/// The figures of a scenario as label/value rows.
fn rows(scenario: &ScenarioReport) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    if let Some(fault) = &scenario.fault {
        rows.push((
            "Fault".into(),
            format!("{} (at {:.1} s, healed at {:.1} s)", fault.what, fault.at_seconds, fault.healed_at_seconds),
        ));
    }
    if let Some(rto) = &scenario.rto {
        let run = &rto.longest_failed_run;
        rows.push(("RTO".into(), seconds(rto.seconds)));
        rows.push((
            "Longest run of failed requests".into(),
            match run.from_seconds {
                Some(from) => format!("{} requests over {:.2} s, from {from:.2} s", run.requests, run.seconds),
                None => "none".into(),
            },
        ));
    }
    for region in &scenario.rpo {
        let window = region
            .window_seconds
            .map_or(String::new(), |[from, to]| format!(", acknowledged from {from:.2} s to {to:.2} s"));
        let lag = region
            .replication_lag_at_fault_seconds
            .map_or(String::new(), |lag| format!("; replication lag at the fault {lag:.3} s"));
        rows.push((format!("RPO, region {}", region.region), format!("{} missing{window}{lag}", region.missing)));
    }
    if let Some(writes) = &scenario.writes {
        rows.push((
            "Acknowledged writes".into(),
            format!(
                "{} ({} committed, {} rejected by a rule after being queued)",
                writes.acknowledged, writes.committed, writes.rejected
            ),
        ));
        rows.push((
            "Lost / duplicated / stuck".into(),
            format!("{} / {} / {}", writes.lost, writes.duplicated, writes.stuck),
        ));
        for lost in writes.lost_writes.iter().take(10) {
            rows.push((
                "Lost".into(),
                format!(
                    "{} {} answered {} at {:.2} s: {}",
                    lost.kind,
                    lost.id,
                    lost.answered,
                    lost.acknowledged_at_seconds,
                    lost.why.join("; ")
                ),
            ));
        }
        for duplicate in writes.duplicates.iter().take(10) {
            rows.push((
                "Duplicated".into(),
                format!("region {} (by {}): {}", duplicate.region, duplicate.found_by, duplicate.what),
            ));
        }
        for stuck in writes.stuck_writes.iter().take(10) {
            rows.push(("Stuck".into(), format!("{} {} answered {}", stuck.kind, stuck.id, stuck.answered)));
        }
    }
    if let Some(latency) = &scenario.latency_ms {
        for (phase, figures) in [("before", &latency.before), ("during", &latency.during), ("after", &latency.after)] {
            rows.push((
                format!("Latency {phase} the fault"),
                format!(
                    "p50 {}, p99 {}, p99.9 {} ({} requests)",
                    optional_ms(figures.p50_ms),
                    optional_ms(figures.p99_ms),
                    optional_ms(figures.p999_ms),
                    figures.requests
                ),
            ));
        }
    }
    if let Some(load) = &scenario.load {
        let answers: Vec<String> = load.answers.iter().map(|(answer, count)| format!("{answer}: {count}")).collect();
        rows.push((
            "Load".into(),
            format!(
                "{:.1} s at {}/s: {} requests, {} failed, {} not sent (client at its limit)",
                load.seconds, load.rate_per_second, load.requests, load.failed, load.shed_by_client
            ),
        ));
        rows.push(("Answers".into(), answers.join(", ")));
        let retries: Vec<String> =
            load.gateway_retries.iter().map(|(reason, count)| format!("{reason}: {count}")).collect();
        rows.push(("Gateway retries".into(), if retries.is_empty() { "none".into() } else { retries.join(", ") }));
    }
    if let Some(over) = scenario.writes_unanswered_within_budget {
        rows.push(("Writes not answered within the budget".into(), over.to_string()));
    }
    if let Some(settle) = &scenario.settle {
        rows.push((
            "Settled".into(),
            format!(
                "{} after {:.1} s; queues drained {} after the heal",
                if settle.settled { "yes" } else { "no" },
                settle.seconds,
                seconds(settle.queue_drained_after_heal_seconds)
            ),
        ));
    }
    if let Some(restore) = &scenario.restore {
        rows.push((
            "Restore".into(),
            format!(
                "backup {:.1} s, restore {:.1} s, start {:.1} s; every restored write served after {}; {} of {} missing",
                restore.backup_seconds,
                restore.restore_seconds,
                restore.start_seconds,
                seconds(restore.serving_seconds),
                restore.missing,
                restore.writes_checked
            ),
        ));
    }
    rows
}

fn outcome_word(outcome: Outcome) -> &'static str {
    outcome.as_str()
}

pub(crate) fn render(report: &Report) -> String {
    let scenarios = report
        .scenarios
        .iter()
        .map(|scenario| {
            let has_timeline = !scenario.timeline.is_empty();
            ScenarioView {
                s: scenario,
                outcome: outcome_word(scenario.outcome),
                rows: rows(scenario),
                requests_chart: has_timeline.then(|| requests_chart(scenario, &scenario.timeline)),
                latency_chart: has_timeline.then(|| latency_chart(scenario, &scenario.timeline)),
                buckets: scenario
                    .timeline
                    .iter()
                    .map(|bucket| {
                        let total = bucket.succeeded + bucket.failed;
                        BucketRow {
                            from: format!("{:.1} s", bucket.from_seconds),
                            succeeded: bucket.succeeded,
                            failed: bucket.failed,
                            rate: if total == 0 {
                                "–".into()
                            } else {
                                format!("{:.1}%", 100.0 * f64::from(bucket.succeeded) / f64::from(total))
                            },
                            p50: optional_ms(bucket.p50_ms),
                            p99: optional_ms(bucket.p99_ms),
                            queue: bucket.queue_depth.map_or("–".into(), |depth| depth.to_string()),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let page = Page { report, verdict: if report.passed { "passed" } else { "failed" }, scenarios };
    page.render().expect("the report template renders")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.3), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(201.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }
}
