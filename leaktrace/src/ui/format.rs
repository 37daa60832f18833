//! Short, fixed-width renderings of the numbers and names the dashboard shows. Pure functions:
//! the widgets call them, tests pin them down.
use crate::schema::{Frame, GrowthClass, SiteReport};

pub use crate::report::human_bytes;

/// The ellipsis used when a name is cut in the middle.
const ELLIPSIS: char = '…';

/// `text` cut to at most `max` characters by removing its middle, so that both the namespace
/// and the function stay readable: `std::vec::Vec<T>::push` at 15 becomes `std::ve…>::push`.
pub fn truncate_middle(text: &str, max: usize) -> String {
    let len = text.chars().count();
    if len <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = text.chars().take(head).collect();
    out.push(ELLIPSIS);
    out.extend(text.chars().skip(len - tail));
    out
}

/// "+1.5 MiB", "-512 B", "-" (no slope).
pub fn signed_bytes(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v < 0.0 => format!("-{}", human_bytes((-v).round() as u64)),
        Some(v) if v.is_finite() => format!("+{}", human_bytes(v.round() as u64)),
        _ => "-".to_string(),
    }
}

/// "4.2s", "3.5m", "1.2h", "-".
pub fn age(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if !s.is_finite() || s < 0.0 => "-".to_string(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
        None => "-".to_string(),
    }
}

/// Uptime as a clock: "12s", "3m05s", "2h07m".
pub fn uptime(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Events per second: "0/s", "950/s", "12.3k/s", "4.1M/s", "n/a".
/// An estimated share of one CPU: `≈0.8% CPU`, `≈12% CPU`, or `n/a`.
pub fn cpu_share(pct: Option<f64>) -> String {
    match pct {
        Some(v) if v.is_finite() && v >= 0.0 => {
            if v < 10.0 {
                format!("≈{v:.1}% CPU")
            } else {
                format!("≈{v:.0}% CPU")
            }
        }
        _ => "n/a".to_string(),
    }
}

pub fn per_second(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v >= 0.0 => {
            if v < 1000.0 {
                format!("{v:.0}/s")
            } else if v < 1_000_000.0 {
                format!("{:.1}k/s", v / 1000.0)
            } else {
                format!("{:.1}M/s", v / 1_000_000.0)
            }
        }
        _ => "n/a".to_string(),
    }
}

/// A count with thousands separators: 1234567 → "1,234,567".
pub fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The growth verdict in one short word.
pub fn class_label(class: GrowthClass) -> &'static str {
    match class {
        GrowthClass::LeakSuspect => "LEAK?",
        GrowthClass::Plateau => "plateau",
        GrowthClass::Churn => "churn",
        GrowthClass::Unknown => "-",
    }
}

/// The file name of a path: `/usr/lib/x86_64-linux-gnu/libc.so.6` → `libc.so.6`.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a module is the C runtime (libc or the dynamic loader) rather than the
/// program: the frames a user wants to see first are the ones above these.
pub fn is_runtime_module(module: &str) -> bool {
    let name = basename(module);
    name.starts_with("libc.so")
        || (name.starts_with("libc-") && name.contains(".so"))
        || name.starts_with("ld-linux")
        || name.starts_with("ld.so")
        || (name.starts_with("ld-") && name.contains(".so"))
}

/// The frame that names a site for a user: the innermost frame outside libc and the dynamic
/// loader (a frame without a module counts as user code), else the innermost frame.
pub fn user_frame(site: &SiteReport) -> Option<&Frame> {
    site.frames
        .iter()
        .find(|f| !f.module.as_deref().is_some_and(is_runtime_module))
        .or_else(|| site.frames.first())
}

/// What to call a frame when only one name fits: its function, else `module+0xoffset`, else
/// its address.
pub fn frame_name(frame: &Frame) -> String {
    match (&frame.function, &frame.module, frame.offset) {
        (Some(function), _, _) => function.clone(),
        (None, Some(module), Some(offset)) => format!("{}+{offset:#x}", basename(module)),
        _ => format!("{:#x}", frame.addr),
    }
}

/// `file.c:42` (file basename), when the frame has a source location.
pub fn frame_location(frame: &Frame) -> Option<String> {
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => Some(format!("{}:{line}", basename(file))),
        (Some(file), None) => Some(basename(file).to_string()),
        _ => None,
    }
}

/// A frame in `width` characters: `name (file:line)` when it all fits, else the name alone,
/// cut in the middle if it has to be.
pub fn frame_in_width(frame: &Frame, width: usize) -> String {
    let name = frame_name(frame);
    if let Some(location) = frame_location(frame) {
        let full = format!("{name} ({location})");
        if full.chars().count() <= width {
            return full;
        }
    }
    truncate_middle(&name, width)
}

/// ASCII case-insensitive substring test; `needle` must already be lower case. Symbol names
/// and paths are ASCII in practice, and this allocates nothing (it runs over every frame of
/// every site at each keystroke of a filter).
pub fn contains_lowercase(haystack: &str, needle: &str) -> bool {
    let (hay, needle) = (haystack.as_bytes(), needle.as_bytes());
    if needle.is_empty() {
        return true;
    }
    hay.windows(needle.len()).any(|w| {
        w.iter()
            .zip(needle)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_share_reads_as_an_estimate() {
        assert_eq!(cpu_share(Some(0.8432)), "≈0.8% CPU");
        assert_eq!(cpu_share(Some(42.4)), "≈42% CPU");
        assert_eq!(cpu_share(None), "n/a");
        assert_eq!(cpu_share(Some(f64::NAN)), "n/a");
    }

    #[test]
    fn long_names_are_cut_in_the_middle() {
        assert_eq!(
            truncate_middle("std::vec::Vec<T>::push", 15),
            "std::ve…>::push"
        );
        assert_eq!(truncate_middle("short", 15), "short");
        assert_eq!(truncate_middle("abcdef", 1), "…");
        assert_eq!(truncate_middle("abcdef", 0), "");
        assert_eq!(truncate_middle("abcdef", 5).chars().count(), 5);
    }

    #[test]
    fn numbers_have_short_forms() {
        assert_eq!(signed_bytes(Some(1536.0)), "+1.5 KiB");
        assert_eq!(signed_bytes(Some(-512.0)), "-512 B");
        assert_eq!(signed_bytes(None), "-");
        assert_eq!(signed_bytes(Some(f64::NAN)), "-");
        assert_eq!(age(Some(3.25)), "3.2s");
        assert_eq!(age(Some(90.0)), "1.5m");
        assert_eq!(uptime(185.0), "3m05s");
        assert_eq!(uptime(7620.0), "2h07m");
        assert_eq!(per_second(Some(12_345.0)), "12.3k/s");
        assert_eq!(per_second(None), "n/a");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
    }

    #[test]
    fn libc_and_the_loader_are_runtime_modules() {
        assert!(is_runtime_module("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_runtime_module("/lib/libc-2.31.so"));
        assert!(is_runtime_module("/lib64/ld-linux-x86-64.so.2"));
        assert!(!is_runtime_module("/usr/bin/leaky"));
        assert!(!is_runtime_module("/usr/lib/libcurl.so.4"));
    }

    #[test]
    fn user_frame_skips_libc() {
        let site = SiteReport::heap_only(
            "s".into(),
            crate::schema::SiteHeap::default(),
            1,
            vec![
                Frame {
                    function: Some("strdup".into()),
                    module: Some("/lib/libc.so.6".into()),
                    ..Frame::default()
                },
                Frame {
                    function: Some("remember".into()),
                    module: Some("/usr/bin/app".into()),
                    ..Frame::default()
                },
            ],
        );
        assert_eq!(
            user_frame(&site).and_then(|f| f.function.as_deref()),
            Some("remember")
        );
    }

    #[test]
    fn case_insensitive_substring() {
        assert!(contains_lowercase("Remember_Session", "session"));
        assert!(!contains_lowercase("remember", "sessions"));
        assert!(contains_lowercase("x", ""));
    }
}
