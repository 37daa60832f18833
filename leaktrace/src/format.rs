//! How every view (headless table, dashboard, `report`, `diff`, exports) writes a number or
//! names a frame or a site. Pure functions, pinned by the tests below.
//!
//! Numbers the data cannot support (absent, NaN, infinite, or a negative age) are never
//! printed as numbers:
//! - ages, R² and classes show `-`;
//! - slopes show `n/a` in the reports and the headless table ([`slope`]) and `-` in the
//!   dashboard's narrow cells ([`slope_cell`]), where every other empty cell is a `-` too;
//! - optional byte counts show `n/a` ([`optional_bytes`]).
use crate::{
    frames::{self, basename, StackFrame},
    schema::{AllocatorReport, CgroupReport, Growth, GrowthClass},
};

/// What a narrow cell shows where the data cannot support a number.
pub const DASH: &str = "-";
/// What prose and wide tables show where the data cannot support a number.
pub const NOT_AVAILABLE: &str = "n/a";
/// The name of a site without frames (its stack was not captured).
pub const NO_FRAMES: &str = "(no frames)";
/// The name of a frame of which nothing is known, not even its address.
pub const UNKNOWN_FRAME: &str = "[unknown]";

/// The ellipsis used when a name is cut in the middle.
const ELLIPSIS: char = '…';

/// `jemalloc 5.3.0`, `musl`: an allocator by name and version.
pub fn allocator_label(allocator: &AllocatorReport) -> String {
    match &allocator.version {
        Some(version) => format!("{} {version}", allocator.name),
        None => allocator.name.clone(),
    }
}

/// `docker 4f3c2b1a4f3c`: a container by runtime and short id (the first 12 hex digits, as
/// `docker ps` shows it); None outside containers.
pub fn container_label(cgroup: &CgroupReport) -> Option<String> {
    let id = cgroup.container_id.as_deref()?;
    let short = id.get(..12).unwrap_or(id);
    Some(match &cgroup.runtime {
        Some(runtime) => format!("{runtime} {short}"),
        None => short.to_string(),
    })
}

/// "1.5 MiB", "512 B".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// "4.0 MiB", or "n/a" when not measured.
pub fn optional_bytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| NOT_AVAILABLE.to_string(), human_bytes)
}

/// A signed amount of bytes: "+2.0 MiB", "-512 B"; zero is "+0 B".
pub fn signed_bytes(bytes: i64) -> String {
    sign_and_bytes(bytes < 0, bytes.unsigned_abs())
}

fn sign_and_bytes(negative: bool, magnitude: u64) -> String {
    format!(
        "{}{}",
        if negative { "-" } else { "+" },
        human_bytes(magnitude)
    )
}

/// A slope in bytes (per MiB processed or per minute), rounded to a byte: "+1.5 KiB",
/// "-512 B"; `None` when there is no slope or it is not a finite number.
fn finite_slope(value: Option<f64>) -> Option<String> {
    let v = value.filter(|v| v.is_finite())?;
    Some(sign_and_bytes(v < 0.0, v.abs().round() as u64))
}

/// A slope in the reports and the headless table: "+555.1 KiB", "-1.0 KiB", "n/a".
pub fn slope(value: Option<f64>) -> String {
    finite_slope(value).unwrap_or_else(|| NOT_AVAILABLE.to_string())
}

/// A slope in a dashboard cell: "+1.5 KiB", "-512 B", "-".
pub fn slope_cell(value: Option<f64>) -> String {
    finite_slope(value).unwrap_or_else(|| DASH.to_string())
}

/// An age or a duration: "4.2s", "3.5m", "1.2h"; "-" when absent, not finite or negative.
pub fn age(seconds: Option<f64>) -> String {
    match seconds.filter(|s| s.is_finite() && *s >= 0.0) {
        None => DASH.to_string(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) if s < 3600.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
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

/// The quality of a fit: "0.99", or "-".
pub fn r2(value: Option<f64>) -> String {
    match value.filter(|v| v.is_finite()) {
        Some(v) => format!("{v:.2}"),
        None => DASH.to_string(),
    }
}

/// The better fit quality of a site's two slopes, for one narrow column.
pub fn best_r2(growth: &Growth) -> String {
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    r2(
        match (finite(growth.r2_processed), finite(growth.r2_time)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    )
}

/// The growth verdict in one short word.
pub fn class_label(class: GrowthClass) -> &'static str {
    match class {
        GrowthClass::LeakSuspect => "LEAK?",
        GrowthClass::Plateau => "plateau",
        GrowthClass::Churn => "churn",
        GrowthClass::HeapGrowth => "GREW",
        GrowthClass::Unknown => DASH,
    }
}

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
        _ => NOT_AVAILABLE.to_string(),
    }
}

/// Events per second: "0/s", "950/s", "12.3k/s", "4.1M/s", "n/a".
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
        _ => NOT_AVAILABLE.to_string(),
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

/// What to call a frame when only one name fits: its function, else `module+0xoffset`, else
/// `module@0xaddress`, else its address, else `module`, else `[unknown]`; never `?`.
pub fn frame_name(frame: &impl StackFrame) -> String {
    if let Some(function) = frame.function() {
        return function.to_string();
    }
    module_offset(frame).unwrap_or_else(|| match (frame.module(), frame.addr()) {
        (Some(module), Some(addr)) => format!("{}@{addr:#x}", basename(module)),
        (None, Some(addr)) => format!("{addr:#x}"),
        (Some(module), None) => basename(module).to_string(),
        (None, None) => UNKNOWN_FRAME.to_string(),
    })
}

/// Where a frame is in its module, `libc.so.6+0x29d90`: stable across runs of one build.
pub fn module_offset(frame: &impl StackFrame) -> Option<String> {
    let module = basename(frame.module()?);
    Some(format!("{module}+{:#x}", frame.offset()?))
}

/// `file.c:42` (the file's directory dropped), or `file.c` without a line, when known.
pub fn frame_location(frame: &impl StackFrame) -> Option<String> {
    let file = basename(frame.file()?);
    Some(match frame.line() {
        Some(line) => format!("{file}:{line}"),
        None => file.to_string(),
    })
}

/// A frame as one short string: `function (file:line)`, `module+0xoffset`, ...
pub fn frame_label(frame: &impl StackFrame) -> String {
    let name = frame_name(frame);
    match frame_location(frame) {
        Some(location) => format!("{name} ({location})"),
        None => name,
    }
}

/// The name of a site in one line, by the rule of [`frames::label_frames`]: its lead frame with
/// its source location, then `via` the library function it called when there is one
/// (`verify_request (app.c:14) via X509_STORE_CTX_new`).
pub fn site_label<F: StackFrame>(frames: &[F]) -> String {
    let Some(label) = frames::label_frames(frames) else {
        return NO_FRAMES.to_string();
    };
    let mut text = frame_label(&frames[label.lead]);
    if let Some(via) = label.via {
        text.push_str(" via ");
        text.push_str(&frame_name(&frames[via]));
    }
    text
}

/// The name of a site in one word: its lead frame's name (the first frame past the allocator
/// plumbing, by [`frames::label_frames`]), for a metric label or a title.
pub fn site_name<F: StackFrame>(frames: &[F]) -> String {
    frames::label_frames(frames)
        .map_or_else(|| NO_FRAMES.to_string(), |l| frame_name(&frames[l.lead]))
}

/// [`site_label`] in `width` characters: whole when it fits, else without the source location,
/// else the lead's name alone, cut in the middle.
pub fn site_label_in_width<F: StackFrame>(frames: &[F], width: usize) -> String {
    let full = site_label(frames);
    if full.chars().count() <= width {
        return full;
    }
    let Some(label) = frames::label_frames(frames) else {
        return truncate_middle(&full, width);
    };
    let lead = frame_name(&frames[label.lead]);
    if let Some(via) = label.via {
        let short = format!("{lead} via {}", frame_name(&frames[via]));
        if short.chars().count() <= width {
            return short;
        }
    }
    truncate_middle(&lead, width)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{postmortem::read::RecordedFrame, schema::Frame};

    #[test]
    fn bytes_are_humanized_with_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(50_000), "48.8 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(optional_bytes(None), "n/a");
        assert_eq!(signed_bytes(2 << 20), "+2.0 MiB");
        assert_eq!(signed_bytes(-512), "-512 B");
        assert_eq!(signed_bytes(0), "+0 B");
    }

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
        assert_eq!(slope_cell(Some(1536.0)), "+1.5 KiB");
        assert_eq!(slope_cell(Some(-512.0)), "-512 B");
        assert_eq!(slope_cell(None), "-");
        assert_eq!(slope_cell(Some(f64::NAN)), "-");
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
    fn numbers_the_data_cannot_support_are_dashes() {
        assert_eq!(slope(None), "n/a");
        assert_eq!(slope(Some(f64::NAN)), "n/a");
        assert_eq!(slope(Some(f64::INFINITY)), "n/a");
        assert_eq!(slope(Some(-2048.0)), "-2.0 KiB");
        assert_eq!(r2(None), "-");
        assert_eq!(r2(Some(f64::NAN)), "-");
        assert_eq!(r2(Some(0.991)), "0.99");
        assert_eq!(age(Some(90.0)), "1.5m");
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(f64::NAN)), "-");
        assert_eq!(age(Some(f64::INFINITY)), "-");
        assert_eq!(age(Some(-5.0)), "-");
        assert_eq!(age(Some(7200.0)), "2.0h");
        assert_eq!(class_label(GrowthClass::Unknown), "-");
    }

    #[test]
    fn the_better_fit_wins_and_nan_is_no_fit() {
        let growth = |r2_processed, r2_time| Growth {
            r2_processed,
            r2_time,
            ..crate::growth::analyze(&[], 0, crate::growth::DEFAULT_RECENT_WINDOW)
        };
        assert_eq!(best_r2(&growth(Some(0.991), Some(0.97))), "0.99");
        assert_eq!(best_r2(&growth(None, Some(0.5))), "0.50");
        assert_eq!(best_r2(&growth(Some(f64::NAN), Some(0.5))), "0.50");
        assert_eq!(best_r2(&growth(None, None)), "-");
    }

    #[test]
    fn case_insensitive_substring() {
        assert!(contains_lowercase("Remember_Session", "session"));
        assert!(!contains_lowercase("remember", "sessions"));
        assert!(contains_lowercase("x", ""));
    }

    fn frame(function: Option<&str>, module: &str) -> Frame {
        Frame {
            addr: 0x1234,
            function: function.map(str::to_string),
            module: Some(module.to_string()),
            offset: Some(0x29d90),
            ..Frame::default()
        }
    }

    #[test]
    fn frames_are_named_by_function_then_module_offset_then_address() {
        assert_eq!(frame_name(&frame(Some("f"), "/lib/libc.so.6")), "f");
        assert_eq!(
            frame_name(&frame(None, "/lib/libc.so.6")),
            "libc.so.6+0x29d90"
        );
        assert_eq!(frame_name(&Frame::default()), "0x0");
        let recorded = RecordedFrame {
            module: Some("/usr/bin/app".into()),
            ..RecordedFrame::default()
        };
        assert_eq!(frame_name(&recorded), "app");
        let recorded_at = RecordedFrame {
            addr: Some(0x7f00_1234),
            ..recorded
        };
        assert_eq!(frame_name(&recorded_at), "app@0x7f001234");
        assert_eq!(frame_name(&RecordedFrame::default()), "[unknown]");
        let located = Frame {
            file: Some("/src/leaky.c".into()),
            line: Some(42),
            ..frame(Some("leak"), "/usr/bin/leaky")
        };
        assert_eq!(frame_label(&located), "leak (leaky.c:42)");
    }

    #[test]
    fn a_site_is_named_by_its_first_user_frame_via_the_library_it_called() {
        let frames = vec![
            frame(Some("strdup"), "/lib/libc.so.6"),
            Frame {
                file: Some("/src/config.c".into()),
                line: Some(12),
                ..frame(Some("load_config"), "/usr/bin/app")
            },
            frame(None, "/usr/bin/app"),
            frame(Some("main"), "/usr/bin/app"),
            frame(Some("__libc_start_call_main"), "/lib/libc.so.6"),
            frame(Some("_start"), "/usr/bin/app"),
        ];
        assert_eq!(site_label(&frames), "load_config (config.c:12) via strdup");
        assert_eq!(site_label_in_width(&frames, 24), "load_config via strdup");
        assert_eq!(site_label_in_width(&frames, 8), "loa…nfig");
        assert_eq!(site_label::<Frame>(&[]), "(no frames)");
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;
    use crate::synthetic::frame;

    #[test]
    fn unnamed_frames_are_module_and_offset_in_every_label() {
        let unnamed = crate::schema::Frame {
            function: None,
            file: None,
            line: None,
            offset: Some(0xfff3c),
            ..frame("x", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", None)
        };
        let frames = vec![
            frame(
                "CRYPTO_zalloc",
                "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
                None,
            ),
            unnamed,
            frame("verify_request", "/usr/bin/app", Some(("app.c", 14))),
        ];
        assert_eq!(
            site_label(&frames),
            "verify_request (app.c:14) via libcrypto.so.3+0xfff3c"
        );
        assert!(!site_label(&frames).contains('?'));
    }
}
