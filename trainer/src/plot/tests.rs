use super::*;

use crate::testutil::TempDir;

/// Checks that every tag is closed in order, and returns the element names
/// in document order.
fn check_well_formed(svg: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop().as_deref(),
                Some(closing.trim()),
                "mismatched </{closing}>"
            );
        } else {
            // Quotes must pair up inside a tag.
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            names.push(name.clone());
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
    names
}

fn sample_jsonl() -> String {
    let mut s = String::new();
    for step in (10..=500).step_by(10) {
        let train = 5.0 * (-(step as f64) / 200.0).exp() + 1.0;
        s.push_str(&format!(
            "{{\"step\":{step},\"train_loss\":{train},\"lr\":0.001}}\n"
        ));
        if step % 100 == 0 {
            let val = train * 1.1 / LN_2;
            s.push_str(&format!(
                "{{\"step\":{step},\"val_loss\":{},\"val_bpb\":{val}}}\n",
                val * LN_2
            ));
        }
    }
    s
}

#[test]
fn plot_is_a_well_formed_svg_with_both_series() {
    let t = TempDir::new("ok");
    let run = t.0.join("my run <1>");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), sample_jsonl()).unwrap();
    let svg_path = t.0.join("loss.svg");
    plot_metrics(&run.join("metrics.jsonl"), &svg_path).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();

    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    let names = check_well_formed(&svg);
    assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2);
    assert!(svg.contains("<polyline class=\"train\"") && svg.contains("<polyline class=\"val\""));
    let train_points = svg
        .split("class=\"train\"")
        .nth(1)
        .unwrap()
        .split("points=\"")
        .nth(1)
        .unwrap();
    assert_eq!(
        train_points.split('"').next().unwrap().split(' ').count(),
        50
    );
    assert_eq!(names.iter().filter(|n| *n == "circle").count(), 5);
    assert!(svg.contains(">step</text>") && svg.contains(">bits per byte</text>"));
    assert!(svg.contains(">train loss / ln 2</text>") && svg.contains(">validation bpb</text>"));
    assert!(svg.contains("my run &lt;1&gt;"), "the title is escaped");
    // Round tick labels on the step axis.
    assert!(
        svg.contains(">100</text>") && svg.contains(">500</text>"),
        "{svg}"
    );
}

#[test]
fn a_bad_jsonl_line_is_reported_with_its_number() {
    let t = TempDir::new("bad");
    let jsonl = t.0.join("metrics.jsonl");
    let mut text = sample_jsonl();
    text.insert_str(
        text.find('\n').unwrap() + 1,
        "{\"step\":20,\"train_loss\":oops}\n",
    );
    std::fs::write(&jsonl, text).unwrap();
    let svg_path = t.0.join("loss.svg");
    let e = format!("{:#}", plot_metrics(&jsonl, &svg_path).unwrap_err());
    assert!(e.contains("metrics.jsonl") && e.contains("line 2:"), "{e}");
    assert!(!svg_path.exists());

    std::fs::write(&jsonl, "{\"step\":1,\"lr\":0.1}\n").unwrap();
    let e = format!("{:#}", plot_metrics(&jsonl, &svg_path).unwrap_err());
    assert!(e.contains("no training or validation losses"), "{e}");
}

#[test]
fn single_points_and_ticks() {
    let one = [Metrics {
        step: 0,
        train_loss: Some(LN_2 * 3.0),
        ..Metrics::default()
    }];
    let svg = render_svg(&one, "t").unwrap();
    check_well_formed(&svg);
    assert!(svg.contains("<circle"), "a lone point gets a marker");
    assert_eq!(nice_step(0.13), 0.2);
    assert_eq!(nice_step(70.0), 100.0);
    assert_eq!(nice_step(5.0), 5.0);
    assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
    assert_eq!(tick_label(-1e-17, 0.1), "0.0");
    assert_eq!(tick_label(1500.0, 500.0), "1500");
}
