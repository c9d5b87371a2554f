//! Line charts over the recent batches, rendered on the server as SVG.
//!
//! Every point is a `<circle>` carrying its batch id and value
//! (`data-batch`, `data-value`) and a tooltip, so that what a chart shows
//! can be checked against the metrics API, and read without a mouse.

use maud::{Markup, PreEscaped, html};

/// The drawing's size in SVG units; it scales to its box.
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 24.0;

/// One chart: a series of values per batch.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Its id (`input-rate`), also the `data-series` of its figure.
    pub id: &'a str,
    /// Its title.
    pub title: &'a str,
    /// The unit of its values (`records/s`, `ms`).
    pub unit: &'a str,
    /// (batch id, value), oldest first.
    pub points: Vec<(u64, f64)>,
    /// A value marked with a dashed line and named (the batch interval).
    pub mark: Option<(f64, &'a str)>,
}

/// A round upper bound of the axis at or above `value`: 1, 2 or 5 times a
/// power of ten.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|bound| *bound >= value)
        .unwrap_or(10.0 * power)
}

/// A value as an axis label: `1.2k`, `350`, `0.25`.
pub fn short_number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e9 {
        format!("{:.1}G", value / 1e9)
    } else if abs >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if abs >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

impl Chart<'_> {
    /// The chart as a `<figure>` holding its SVG.
    pub fn render(&self) -> Markup {
        let highest = self
            .points
            .iter()
            .map(|(_, v)| *v)
            .chain(self.mark.map(|(v, _)| v))
            .fold(0.0, f64::max);
        let top = nice_ceiling(highest * 1.05);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let n = self.points.len();
        let x = |i: usize| {
            if n <= 1 {
                LEFT + plot_w / 2.0
            } else {
                LEFT + plot_w * i as f64 / (n - 1) as f64
            }
        };
        let y = |v: f64| TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
        let line: String = self
            .points
            .iter()
            .enumerate()
            .map(|(i, (_, v))| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, x(i), y(*v)))
            .collect();
        let latest = self.points.last().map(|(_, v)| *v);
        html! {
            figure.chart data-series=(self.id) {
                figcaption {
                    span.title { (self.title) }
                    span.latest {
                        @if let Some(v) = latest { (short_number(v)) " " (self.unit) } @else { "no batches yet" }
                    }
                }
                svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
                    aria-label=(format!("{} over the last {n} batches", self.title)) {
                    @for k in 0..=4 {
                        @let v = top * f64::from(k) / 4.0;
                        line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(format!("{:.1}", y(v))) y2=(format!("{:.1}", y(v))) {}
                        text.axis x=(LEFT - 6.0) y=(format!("{:.1}", y(v) + 4.0)) text-anchor="end" { (short_number(v)) }
                    }
                    @if let Some((first, _)) = self.points.first() {
                        text.axis x=(LEFT) y=(HEIGHT - 6.0) { "#" (first) }
                    }
                    @if let (Some((last, _)), true) = (self.points.last(), n > 1) {
                        text.axis x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" { "#" (last) }
                    }
                    @if let Some((value, label)) = self.mark {
                        line.mark x1=(LEFT) x2=(WIDTH - RIGHT) y1=(format!("{:.1}", y(value))) y2=(format!("{:.1}", y(value))) {}
                        text.mark x=(WIDTH - RIGHT) y=(format!("{:.1}", y(value) - 4.0)) text-anchor="end" { (label) }
                    }
                    @if n > 1 {
                        path.series d=(line) {}
                    }
                    @for (i, (batch, value)) in self.points.iter().enumerate() {
                        circle.point cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*value))) r="2.5"
                            data-batch=(batch) data-value=(format!("{value:.3}")) {
                            title { "batch " (batch) ": " (short_number(*value)) " " (self.unit) }
                        }
                    }
                    @if n == 0 {
                        text.empty x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" { (PreEscaped("&#8212;")) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(420.0), 500.0);
        assert_eq!(nice_ceiling(5_001.0), 10_000.0);
    }

    #[test]
    fn every_point_carries_its_batch_and_value() {
        let chart = Chart {
            id: "processing-time",
            title: "Processing time",
            unit: "ms",
            points: vec![(7, 12.5), (8, 30.25), (9, 0.0)],
            mark: Some((100.0, "batch interval")),
        };
        let svg = chart.render().into_string();
        assert!(svg.contains(r#"data-series="processing-time""#), "{svg}");
        for (batch, value) in [("7", "12.500"), ("8", "30.250"), ("9", "0.000")] {
            assert!(
                svg.contains(&format!(r#"data-batch="{batch}" data-value="{value}""#)),
                "{svg}"
            );
        }
        assert!(svg.contains("batch interval"));
        assert!(svg.contains("<path class=\"series\""));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let chart = Chart {
            id: "input-rate",
            title: "Input rate",
            unit: "records/s",
            points: Vec::new(),
            mark: None,
        };
        let svg = chart.render().into_string();
        assert!(svg.contains("no batches yet"));
        assert!(!svg.contains("<circle"));
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(2.5), "2.50");
        assert_eq!(short_number(37.5), "37.5");
        assert_eq!(short_number(250.0), "250");
        assert_eq!(short_number(1_500.0), "1.5k");
        assert_eq!(short_number(25_000.0), "25k");
        assert_eq!(short_number(3_200_000.0), "3.2M");
    }
}
