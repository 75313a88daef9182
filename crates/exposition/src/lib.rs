//! Metrics exposition: a `prometheus_client` registry served as what the scraper asks for.
//!
//! `prometheus_client` writes OpenMetrics only. Prometheus asks for OpenMetrics first, but
//! `promtool check metrics`, curl and most other readers expect Prometheus's text format 0.0.4,
//! where a counter's family carries its `_total` name, there is no `# UNIT` and no `# EOF`. So
//! `/metrics` answers OpenMetrics only to an `Accept` that names it, and the text format to
//! everyone else: the sample lines are the same in both.

use prometheus_client::registry::Registry;

/// `Content-Type` of Prometheus's text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/metrics` answers: the content type and the body.
#[derive(Debug)]
pub struct Exposition {
    pub content_type: &'static str,
    pub body: String,
}

/// Encodes `registries` (one after the other, as one exposition) in the format `accept` asks for.
pub fn encode(registries: &[&Registry], accept: Option<&str>) -> Result<Exposition, std::fmt::Error> {
    let mut openmetrics = String::new();
    for registry in registries {
        prometheus_client::encoding::text::encode_registry(&mut openmetrics, registry)?;
    }
    if wants_openmetrics(accept) {
        prometheus_client::encoding::text::encode_eof(&mut openmetrics)?;
        return Ok(Exposition { content_type: OPENMETRICS_CONTENT_TYPE, body: openmetrics });
    }
    Ok(Exposition { content_type: TEXT_CONTENT_TYPE, body: openmetrics_to_text(&openmetrics) })
}

/// Whether an `Accept` header asks for OpenMetrics (with a non-zero quality).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|parameter| {
            parameter
                .strip_prefix("q=")
                .and_then(|quality| quality.parse::<f64>().ok())
                .is_some_and(|quality| quality <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// Rewrites OpenMetrics text as Prometheus's text format 0.0.4: a counter's `# HELP` and
/// `# TYPE` name its samples' `_total` name, `info` becomes a gauge named `_info` and `unknown`
/// becomes `untyped`; `# UNIT`, `# EOF` and exemplars go.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut families: Vec<Family<'_>> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.push(Family { name, help, kind: "untyped", samples: Vec::new() });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            match families.last_mut() {
                Some(family) if family.name == name => family.kind = kind,
                _ => families.push(Family { name, help: "", kind, samples: Vec::new() }),
            }
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT` and `# EOF`: not in the text format.
        } else if let Some(family) = families.last_mut() {
            // An exemplar follows ` # ` after the value; the text format has none.
            let sample = line.split_once(" # ").map_or(line, |(sample, _exemplar)| sample);
            family.samples.push(sample);
        }
    }
    for family in &families {
        let (name, kind) = match family.kind {
            "counter" => (format!("{}_total", family.name), "counter"),
            "info" => (format!("{}_info", family.name), "gauge"),
            "gauge" | "histogram" | "summary" => (family.name.to_string(), family.kind),
            _ => (family.name.to_string(), "untyped"),
        };
        if !family.help.is_empty() {
            out.push_str(&format!("# HELP {name} {}\n", family.help));
        }
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for sample in &family.samples {
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    samples: Vec<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("rananeeti_things", "Things done", counter);
        let gauge: Gauge = Gauge::default();
        gauge.set(3);
        registry.register("rananeeti_depth", "Entries waiting", gauge);
        let histogram = Histogram::new([0.1, 1.0]);
        histogram.observe(0.5);
        registry.register("rananeeti_wait_seconds", "Time waited", histogram);
        registry
    }

    #[test]
    fn counters_carry_their_total_name_in_the_text_format_and_nothing_openmetrics_only_is_left() {
        let text = encode(&[&registry()], None).unwrap();
        assert_eq!(text.content_type, TEXT_CONTENT_TYPE);
        let expected = "# HELP rananeeti_things_total Things done.\n\
                        # TYPE rananeeti_things_total counter\n\
                        rananeeti_things_total 1\n\
                        # HELP rananeeti_depth Entries waiting.\n\
                        # TYPE rananeeti_depth gauge\n\
                        rananeeti_depth 3\n\
                        # HELP rananeeti_wait_seconds Time waited.\n\
                        # TYPE rananeeti_wait_seconds histogram\n\
                        rananeeti_wait_seconds_sum 0.5\n\
                        rananeeti_wait_seconds_count 1\n\
                        rananeeti_wait_seconds_bucket{le=\"0.1\"} 0\n\
                        rananeeti_wait_seconds_bucket{le=\"1.0\"} 1\n\
                        rananeeti_wait_seconds_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(text.body, expected);
    }

    #[test]
    fn openmetrics_is_answered_only_to_who_asks_for_it() {
        let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let answer = encode(&[&registry()], Some(prometheus_accept)).unwrap();
        assert_eq!(answer.content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(answer.body.contains("# TYPE rananeeti_things counter\nrananeeti_things_total 1\n"));
        assert!(answer.body.ends_with("# EOF\n"));
        for accept in [None, Some("*/*"), Some("text/plain"), Some("application/openmetrics-text;q=0")] {
            assert_eq!(encode(&[&registry()], accept).unwrap().content_type, TEXT_CONTENT_TYPE, "{accept:?}");
        }
    }

    #[test]
    fn exemplars_units_and_eof_are_dropped_and_several_registries_make_one_exposition() {
        let openmetrics = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\n\
                           a_seconds_total 1 # {trace=\"x\"} 1.0\n# HELP b B.\n# TYPE b unknown\nb 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(openmetrics),
            "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total 1\n\
             # HELP b B.\n# TYPE b untyped\nb 2\n"
        );
        let both = encode(&[&registry(), &registry()], None).unwrap();
        assert_eq!(both.body.matches("# TYPE rananeeti_depth gauge").count(), 2);
    }
}
