//! Small inline SVG line charts for the console: one line per series over the samples kept, the
//! scale from zero to the largest value, a legend in HTML beside it (text stays text).

use std::fmt::Write as _;

const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 96.0;
const PADDING: f64 = 4.0;
/// Dark enough to read against white, and told apart by the legend's names too.
const COLOURS: [&str; 6] = ["#1a4fa0", "#a0341a", "#2e6b30", "#6a1b9a", "#7a5c00", "#00695c"];

pub struct Series {
    pub label: String,
    /// One value per sample, oldest first; `None` where the sample has none (a node that did
    /// not answer): the line breaks there.
    pub values: Vec<Option<f64>>,
}

/// The chart as a `<figure>` with the slug `name` (`data-chart`), a title and a unit.
pub fn line_chart(name: &str, title: &str, unit: &str, series: &[Series]) -> String {
    let samples = series.iter().map(|series| series.values.len()).max().unwrap_or(0);
    let largest = series.iter().flat_map(|series| series.values.iter().flatten()).fold(0.0_f64, |a, b| a.max(*b));
    let top = if largest > 0.0 { largest } else { 1.0 };
    let x = |index: usize| {
        if samples <= 1 {
            WIDTH - PADDING
        } else {
            PADDING + (WIDTH - 2.0 * PADDING) * index as f64 / (samples - 1) as f64
        }
    };
    let y = |value: f64| HEIGHT - PADDING - (HEIGHT - 2.0 * PADDING) * (value / top).clamp(0.0, 1.0);

    let mut svg = String::new();
    let caption_id = format!("chart-{name}");
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" aria-labelledby="{caption_id}">"#
    );
    let _ = write!(svg, r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#f4f6f8"/>"##);
    let _ = write!(svg, r##"<line x1="0" y1="{0}" x2="{WIDTH}" y2="{0}" stroke="#9aa5b1" stroke-width="1"/>"##, y(0.0));
    for (index, series) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        // Consecutive known values make one line; a gap starts another.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (at, value) in series.values.iter().enumerate() {
            match value {
                Some(value) => runs.last_mut().expect("one run at least").push((x(at), y(*value))),
                None if runs.last().is_some_and(|run| !run.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        for run in runs.iter().filter(|run| !run.is_empty()) {
            if run.len() == 1 {
                let (cx, cy) = run[0];
                let _ = write!(svg, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="2" fill="{colour}"/>"#);
            } else {
                let points: Vec<String> = run.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
                let _ = write!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" vector-effect="non-scaling-stroke"/>"#,
                    points.join(" ")
                );
            }
        }
    }
    svg.push_str("</svg>");

    let mut legend = String::new();
    for (index, series) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let last = series.values.iter().rev().flatten().next();
        let _ = write!(
            legend,
            r#"<li><span class="swatch" style="background:{colour}" aria-hidden="true"></span>{}: {}</li>"#,
            escape(&series.label),
            last.map_or_else(|| "no value".to_string(), |value| format!("{} {}", figure(*value), escape(unit)))
        );
    }
    format!(
        r#"<figure class="chart" data-chart="{name}" data-series="{}"><figcaption id="{caption_id}">{} <span class="scale">(0 to {} {}, last {} samples)</span></figcaption>{svg}<ul class="legend">{legend}</ul></figure>"#,
        series.len(),
        escape(title),
        figure(top),
        escape(unit),
        samples,
    )
}

/// A value as a person reads it: integers as such, others with at most two decimals.
pub fn figure(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Text made safe for HTML: element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_one_line_per_run_of_values_and_names_each_series() {
        let series = vec![
            Series { label: "r1-n1".into(), values: vec![Some(0.0), Some(4.0), None, Some(2.0), Some(1.0)] },
            Series { label: "r1-<n2>".into(), values: vec![None, None, None, None, None] },
        ];
        let chart = line_chart("queue-depth", "Queue depth", "entries", &series);
        assert_eq!(chart.matches("<polyline").count(), 2, "two runs of values, split by the gap: {chart}");
        assert!(chart.contains("r1-n1: 1 entries"), "{chart}");
        assert!(chart.contains("r1-&lt;n2&gt;: no value"), "labels are escaped: {chart}");
        assert!(chart.contains("(0 to 4 entries, last 5 samples)"), "{chart}");
        assert_eq!(figure(0.25), "0.25");
        assert_eq!(figure(2.0), "2");
        assert_eq!(figure(1.5), "1.5");
    }
}
