//! A small Prometheus registry: labelled counters, gauges and histograms, rendered
//! in the text exposition format (version 0.0.4).
//!
//! Invariants: a family's label values always match its label names in number
//! (a mismatch is a programming error, logged and ignored, never a panic); series
//! render in sorted label order so that output is stable; label values are escaped
//! (`\\`, `"`, newline); histogram buckets are cumulative and end with `+Inf`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

type Labels = Vec<String>;

fn check_arity(name: &str, names: &[&str], values: &[&str]) -> bool {
    if names.len() == values.len() {
        true
    } else {
        tracing::error!(
            metric = name,
            "label values {values:?} do not match label names {names:?}"
        );
        false
    }
}

fn key(values: &[&str]) -> Labels {
    values.iter().map(|s| s.to_string()).collect()
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{a="x",b="y"}` with `extra` appended (e.g. `le`); empty when there are none.
fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A float as Prometheus writes it.
fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A monotonically increasing value per label set.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Labels, f64>>,
}

impl Counter {
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Counter {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1.0);
    }

    pub fn add(&self, values: &[&str], v: f64) {
        if v < 0.0 || !check_arity(self.name, self.labels, values) {
            return;
        }
        *lock(&self.series).entry(key(values)).or_insert(0.0) += v;
    }

    pub fn get(&self, values: &[&str]) -> f64 {
        lock(&self.series).get(&key(values)).copied().unwrap_or(0.0)
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (k, v) in lock(&self.series).iter() {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                label_set(self.labels, k, None),
                num(*v)
            );
        }
    }
}

/// A value that goes up and down, per label set.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Labels, f64>>,
}

impl Gauge {
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Gauge {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn set(&self, values: &[&str], v: f64) {
        if check_arity(self.name, self.labels, values) {
            lock(&self.series).insert(key(values), v);
        }
    }

    /// Drops every series (for gauges rebuilt from a snapshot at each scrape).
    pub fn clear(&self) {
        lock(&self.series).clear();
    }

    pub fn get(&self, values: &[&str]) -> Option<f64> {
        lock(&self.series).get(&key(values)).copied()
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        for (k, v) in lock(&self.series).iter() {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                label_set(self.labels, k, None),
                num(*v)
            );
        }
    }
}

struct HistogramSeries {
    /// Per bucket (not cumulative); the last entry is the `+Inf` overflow.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Observations counted into fixed buckets, per label set.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// Upper bounds, strictly increasing, finite.
    bounds: Vec<f64>,
    series: Mutex<BTreeMap<Labels, HistogramSeries>>,
}

impl Histogram {
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &[f64],
    ) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(|a, b| a.total_cmp(b));
        bounds.dedup();
        Histogram {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, values: &[&str], v: f64) {
        if v.is_nan() || !check_arity(self.name, self.labels, values) {
            return;
        }
        let slot = self.bounds.partition_point(|&b| b < v);
        let mut series = lock(&self.series);
        let s = series
            .entry(key(values))
            .or_insert_with(|| HistogramSeries {
                counts: vec![0; self.bounds.len() + 1],
                sum: 0.0,
                count: 0,
            });
        s.counts[slot] += 1;
        s.sum += v;
        s.count += 1;
    }

    /// Observations so far for a label set.
    pub fn count(&self, values: &[&str]) -> u64 {
        lock(&self.series).get(&key(values)).map_or(0, |s| s.count)
    }

    /// Sum of the observations so far for a label set.
    pub fn sum(&self, values: &[&str]) -> f64 {
        lock(&self.series).get(&key(values)).map_or(0.0, |s| s.sum)
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (k, s) in lock(&self.series).iter() {
            let mut cumulative = 0;
            for (i, c) in s.counts.iter().enumerate() {
                cumulative += c;
                let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| num(*b));
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    self.name,
                    label_set(self.labels, k, Some(("le", &le)))
                );
            }
            let ls = label_set(self.labels, k, None);
            let _ = writeln!(out, "{}_sum{ls} {}", self.name, num(s.sum));
            let _ = writeln!(out, "{}_count{ls} {}", self.name, s.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_renders_labels_escaped_and_sorted() {
        let c = Counter::new("x_total", "Things.", &["a"]);
        c.inc(&["z"]);
        c.add(&["b\"\\\n"], 2.0);
        c.inc(&["z"]);
        c.inc(&["too", "many"]); // ignored
        c.add(&["z"], -1.0); // ignored
        let mut out = String::new();
        c.render(&mut out);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{a=\"b\\\"\\\\\\n\"} 2\nx_total{a=\"z\"} 2\n"
        );
        assert_eq!(c.get(&["z"]), 2.0);
    }

    #[test]
    fn gauge_set_and_clear() {
        let g = Gauge::new("g", "G.", &[]);
        g.set(&[], 1.5);
        let mut out = String::new();
        g.render(&mut out);
        assert!(out.ends_with("g 1.5\n"), "{out}");
        g.clear();
        assert_eq!(g.get(&[]), None);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new("h_seconds", "H.", &["e"], &[0.25, 1.0]);
        for v in [0.125, 0.25, 0.5, 4.0] {
            h.observe(&["c"], v);
        }
        let mut out = String::new();
        h.render(&mut out);
        let want = "h_seconds_bucket{e=\"c\",le=\"0.25\"} 2\n\
                    h_seconds_bucket{e=\"c\",le=\"1\"} 3\n\
                    h_seconds_bucket{e=\"c\",le=\"+Inf\"} 4\n\
                    h_seconds_sum{e=\"c\"} 4.875\n\
                    h_seconds_count{e=\"c\"} 4\n";
        assert!(out.ends_with(want), "{out}");
        assert_eq!(h.count(&["c"]), 4);
    }
}
