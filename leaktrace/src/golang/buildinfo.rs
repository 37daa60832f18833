//! The build information the Go linker writes into every binary (`.go.buildinfo`): the Go
//! version and the main module's path. Written by hand: the format is 32 bytes of header and
//! two length-prefixed strings (Go 1.18+, `debug/buildinfo`), no crate reads it.

/// `"\xff Go buildinf:"`: the section's first 14 bytes.
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// Header bytes before the strings.
const HEADER_BYTES: usize = 32;
/// Flags bit: the strings follow the header inline (Go 1.18 and later).
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// Longest string accepted (a version or a module listing).
const MAX_STRING_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// As the toolchain names itself, e.g. `go1.22.10`.
    pub version: String,
    /// The main module's path (`path` line of the module listing), when recorded.
    pub main_path: Option<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildInfoError {
    #[error("no Go build information (not a Go binary)")]
    NotGo,
    #[error("Go build information in the pre-1.18 format (Go 1.18 or later is needed)")]
    TooOld,
    #[error("malformed Go build information: {0}")]
    Malformed(&'static str),
}

impl BuildInfo {
    /// Parse the contents of the `.go.buildinfo` section.
    pub fn parse(section: &[u8]) -> Result<BuildInfo, BuildInfoError> {
        if !section.starts_with(MAGIC) {
            return Err(BuildInfoError::NotGo);
        }
        let flags = *section
            .get(15)
            .ok_or(BuildInfoError::Malformed("short header"))?;
        if flags & FLAG_INLINE_STRINGS == 0 {
            return Err(BuildInfoError::TooOld);
        }
        let rest = section
            .get(HEADER_BYTES..)
            .ok_or(BuildInfoError::Malformed("short header"))?;
        let (version, rest) = read_string(rest)?;
        let (modinfo, _) = read_string(rest)?;
        if version.is_empty() {
            return Err(BuildInfoError::Malformed("empty version"));
        }
        Ok(BuildInfo {
            version: String::from_utf8_lossy(version).into_owned(),
            main_path: main_path(modinfo),
        })
    }

    /// (major, minor) of the version, e.g. (1, 22) for `go1.22.10`; `None` for a development
    /// toolchain (`devel ...`).
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        parse_version(&self.version)
    }
}

/// (major, minor) of a Go version string (`go1.22.10`, `go1.21rc2`, `go1.25.5 X:nodwarf5`).
pub fn parse_version(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A uvarint-length-prefixed string, and what follows it.
fn read_string(data: &[u8]) -> Result<(&[u8], &[u8]), BuildInfoError> {
    let mut len = 0u64;
    let mut shift = 0;
    let mut used = 0;
    for &byte in data.iter().take(10) {
        used += 1;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if used == 0 || len > MAX_STRING_BYTES {
        return Err(BuildInfoError::Malformed("bad string length"));
    }
    let end = used + len as usize;
    let string = data
        .get(used..end)
        .ok_or(BuildInfoError::Malformed("string past the end"))?;
    Ok((string, &data[end..]))
}

/// The `path` line of the module listing (which sits between two 16-byte sentinels).
fn main_path(modinfo: &[u8]) -> Option<String> {
    const SENTINEL_BYTES: usize = 16;
    let listing = if modinfo.len() > 2 * SENTINEL_BYTES {
        &modinfo[SENTINEL_BYTES..modinfo.len() - SENTINEL_BYTES]
    } else {
        modinfo
    };
    let text = String::from_utf8_lossy(listing);
    text.lines()
        .find_map(|line| line.strip_prefix("path\t"))
        .map(|path| path.trim().to_string())
        .filter(|path| !path.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        data.push(8);
        data.push(FLAG_INLINE_STRINGS);
        data.resize(HEADER_BYTES, 0);
        for s in [version, modinfo] {
            data.push(u8::try_from(s.len()).expect("short"));
            data.extend_from_slice(s.as_bytes());
        }
        data
    }

    #[test]
    fn reads_version_and_main_module() {
        let modinfo = "0123456789abcdefpath\texample.com/leaky\nmod\texample.com/leaky\t(devel)\t\n0123456789abcdef";
        let info = BuildInfo::parse(&section("go1.22.10", modinfo)).expect("parses");
        assert_eq!(info.version, "go1.22.10");
        assert_eq!(info.main_path.as_deref(), Some("example.com/leaky"));
        assert_eq!(info.major_minor(), Some((1, 22)));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(BuildInfo::parse(b"\x7fELF"), Err(BuildInfoError::NotGo));
        let mut old = section("go1.16", "");
        old[15] = 0;
        assert_eq!(BuildInfo::parse(&old), Err(BuildInfoError::TooOld));
        let mut truncated = section("go1.22.10", "");
        truncated.truncate(HEADER_BYTES + 4);
        assert!(matches!(
            BuildInfo::parse(&truncated),
            Err(BuildInfoError::Malformed(_))
        ));
        assert!(BuildInfo::parse(&section("", "")).is_err());
    }

    #[test]
    fn versions_of_every_shape() {
        assert_eq!(parse_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_version("go1.21rc2"), Some((1, 21)));
        assert_eq!(parse_version("go1.25.5 X:nodwarf5"), Some((1, 25)));
        assert_eq!(parse_version("devel go1.26-abc"), None);
    }
}
