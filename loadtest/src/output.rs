//! Latency distribution outputs of `mcplb-load run`: the HdrHistogram `.hgrm`
//! percentile text (`--hgrm`) and a self-contained SVG plot (`--svg`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::load::LoadReport;

/// Values are recorded in µs and written in ms.
const SCALING_RATIO: f64 = 1000.0;
/// Reporting ticks per half distance to 100%, as HdrHistogram's default.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One row of the percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileRow {
    /// Highest equivalent value at this percentile, µs.
    pub value: u64,
    /// Quantile iterated to, 0..=1.
    pub quantile: f64,
    /// Number of values up to and including `value`.
    pub total_count: u64,
}

/// The percentile rows of `h` (5 ticks per half distance), as
/// `outputPercentileDistribution` walks them. Empty for an empty histogram.
pub fn percentile_rows(h: &Histogram<u64>) -> Vec<PercentileRow> {
    let mut rows = Vec::new();
    if h.is_empty() {
        return rows;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        rows.push(PercentileRow {
            value: h.highest_equivalent(v.value_iterated_to()),
            quantile: v.quantile_iterated_to(),
            total_count: total,
        });
    }
    rows
}

/// The histogram in HdrHistogram's `.hgrm` percentile-distribution text
/// format (values in ms, scaling ratio 1000), as written by
/// `outputPercentileDistribution(out, 5, 1000.0)`.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let digits = usize::from(h.sigfig());
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for r in percentile_rows(h) {
        let value = r.value as f64 / SCALING_RATIO;
        if r.quantile < 1.0 {
            let _ = writeln!(
                s,
                "{value:>12.digits$} {:>2.12} {:>10} {:>14.2}",
                r.quantile,
                r.total_count,
                1.0 / (1.0 - r.quantile)
            );
        } else {
            let _ = writeln!(
                s,
                "{value:>12.digits$} {:>2.12} {:>10}",
                r.quantile, r.total_count
            );
        }
    }
    let (mean, sd) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / SCALING_RATIO, h.stdev() / SCALING_RATIO)
    };
    let _ = writeln!(
        s,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {sd:>12.digits$}]"
    );
    let max = h.max() as f64 / SCALING_RATIO;
    let _ = writeln!(
        s,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    );
    let sub_buckets = 1u64 << (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil() as u32;
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() => {}
            c => o.push(c),
        }
    }
    o
}

/// A "nice" axis maximum (1, 2, 2.5 or 5 times a power of ten) at or above `v`.
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * 0.999_999 {
            return m * p;
        }
    }
    10.0 * p
}

/// A self-contained SVG of the latency percentile spectrum of `report`: x is
/// the percentile on a log scale of 1/(1-p), y the latency in ms.
pub fn svg(report: &LoadReport) -> String {
    const W: f64 = 900.0;
    const H: f64 = 540.0;
    const L: f64 = 80.0; // left margin
    const R: f64 = 30.0;
    const T: f64 = 60.0;
    const B: f64 = 70.0;
    /// Decades on the x axis: 0% .. 99.999%.
    const DECADES: f64 = 5.0;
    let pw = W - L - R;
    let ph = H - T - B;
    let rows = percentile_rows(&report.histogram);
    let max_ms = report.histogram.max() as f64 / SCALING_RATIO;
    let y_max = nice_ceil(max_ms);
    let x_of = |q: f64| {
        let d = if q >= 1.0 {
            DECADES
        } else {
            (1.0 / (1.0 - q)).log10().clamp(0.0, DECADES)
        };
        L + pw * d / DECADES
    };
    let y_of = |ms: f64| T + ph - ph * (ms / y_max).clamp(0.0, 1.0);

    let mode = match report.rate {
        Some(r) => format!("open loop {r} req/s"),
        None => "closed loop".to_string(),
    };
    let title = format!(
        "Latency by percentile: {} ({mode}, {} requests, {} connections)",
        report.url,
        report.histogram.len(),
        report.connections
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>
<text x="{}" y="30" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        xml_escape(&title)
    );
    // Grid and x labels.
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (i, lab) in labels.iter().enumerate() {
        let x = L + pw * i as f64 / DECADES;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>
<text x="{x:.1}" y="{:.1}" text-anchor="middle">{lab}</text>"##,
            T + ph,
            T + ph + 18.0
        );
    }
    // Grid and y labels.
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>
<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            L + pw,
            L - 6.0,
            y + 4.0,
            trim_float(v)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile</text>
<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">Latency (ms)</text>"##,
        L + pw / 2.0,
        H - 20.0,
        T + ph / 2.0,
        T + ph / 2.0
    );
    // The spectrum.
    let mut points = String::new();
    for r in &rows {
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            x_of(r.quantile),
            y_of(r.value as f64 / SCALING_RATIO)
        );
    }
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        points.trim_end()
    );
    s.push_str("</svg>\n");
    s
}

/// `2.5` -> "2.5", `10.0` -> "10", up to 3 decimals.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(3.2), 5.0);
        assert_eq!(nice_ceil(12.0), 20.0);
        assert_eq!(nice_ceil(0.21), 0.25);
        assert_eq!(trim_float(2.5), "2.5");
        assert_eq!(trim_float(10.0), "10");
    }

    #[test]
    fn hgrm_of_known_values() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
            unreachable!();
        });
        for v in 1..=10_000u64 {
            h.record(v).unwrap_or_default();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(text.contains("#[Max     =       10.007, Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap_or_default();
        assert!(last.contains("1.000000000000      10000"), "{last}");
    }
}
