//! `--compress` specifications, parsed and validated the way PostgreSQL does
//! (`src/common/compression.c` and pg_basebackup's `backup_parse_compress_options`), with its
//! messages: `[client-|server-]ALGORITHM[:DETAIL]`, a bare integer meaning a gzip level (0: none),
//! DETAIL a bare level or `level=N`, `workers=N`, `long[=BOOL]` separated by commas. Server
//! specifications are passed to the server as given, for it to validate.

/// Where compression happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Client,
    Server,
    Unspecified,
}

/// A compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    None,
    Gzip,
    Lz4,
    Zstd,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Algorithm::None,
            "gzip" => Algorithm::Gzip,
            "lz4" => Algorithm::Lz4,
            "zstd" => Algorithm::Zstd,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::None => "none",
            Algorithm::Gzip => "gzip",
            Algorithm::Lz4 => "lz4",
            Algorithm::Zstd => "zstd",
        }
    }
}

/// A parsed and validated specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub algorithm: Algorithm,
    pub level: i32,
    pub workers: Option<i32>,
    pub long_distance: Option<bool>,
}

/// Splits an option into its location, algorithm name and detail.
pub fn split(option: &str) -> (Location, String, Option<String>) {
    let (loc, rest) = if let Some(r) = option.strip_prefix("server-") {
        (Location::Server, r)
    } else if let Some(r) = option.strip_prefix("client-") {
        (Location::Client, r)
    } else {
        (Location::Unspecified, option)
    };
    // a bare integer is a gzip level, 0 meaning none (for backward compatibility)
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        return match rest.parse::<i64>() {
            Ok(0) => (loc, "none".into(), None),
            _ => (loc, "gzip".into(), Some(rest.to_owned())),
        };
    }
    match rest.split_once(':') {
        Some((a, d)) => (loc, a.to_owned(), Some(d.to_owned())),
        None => (loc, rest.to_owned(), None),
    }
}

fn integer(keyword: &str, value: Option<&str>) -> Result<i32, String> {
    let v = value.ok_or_else(|| format!("compression option \"{keyword}\" requires a value"))?;
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "value for compression option \"{keyword}\" must be an integer"
        ));
    }
    v.parse::<i64>()
        .map(|n| n.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
        .map_err(|_| format!("value for compression option \"{keyword}\" must be an integer"))
}

fn boolean(keyword: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("on" | "true" | "yes" | "1" | "t" | "y") => Ok(true),
        Some("off" | "false" | "no" | "0" | "f" | "n") => Ok(false),
        _ => Err(format!(
            "value for compression option \"{keyword}\" must be a Boolean value"
        )),
    }
}

/// Parses and validates a detail for `algorithm`; the error is what PostgreSQL prints after
/// "invalid compression specification: ".
pub fn parse(algorithm: Algorithm, detail: Option<&str>) -> Result<Spec, String> {
    let default_level = match algorithm {
        Algorithm::None | Algorithm::Lz4 => 0,
        Algorithm::Gzip => -1,
        Algorithm::Zstd => 3,
    };
    let mut spec = Spec {
        algorithm,
        level: default_level,
        workers: None,
        long_distance: None,
    };
    if let Some(d) = detail {
        let bare = d.strip_prefix(['-', '+']).unwrap_or(d);
        if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
            spec.level = integer("level", Some(d))?;
        } else {
            for item in d.split(',') {
                let (keyword, value) = match item.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (item, None),
                };
                if keyword.is_empty() {
                    return Err("found empty string where a compression option was expected".into());
                }
                match keyword {
                    "level" => spec.level = integer(keyword, value)?,
                    "workers" => spec.workers = Some(integer(keyword, value)?),
                    "long" => spec.long_distance = Some(boolean(keyword, value)?),
                    k => return Err(format!("unrecognized compression option: \"{k}\"")),
                }
            }
        }
    }
    let name = algorithm.name();
    let (min, max) = match algorithm {
        Algorithm::None => {
            if spec.level != 0 {
                return Err(format!(
                    "compression algorithm \"{name}\" does not accept a compression level"
                ));
            }
            (0, 0)
        }
        Algorithm::Gzip => (1, 9),
        Algorithm::Lz4 => (1, 12),
        Algorithm::Zstd => (-131_072, 22),
    };
    if (spec.level < min || spec.level > max) && spec.level != default_level {
        return Err(format!(
            "compression algorithm \"{name}\" expects a compression level between {min} and {max} (default at {default_level})"
        ));
    }
    if spec.workers.is_some() && algorithm != Algorithm::Zstd {
        return Err(format!(
            "compression algorithm \"{name}\" does not accept a worker count"
        ));
    }
    if spec.long_distance.is_some() && algorithm != Algorithm::Zstd {
        return Err(format!(
            "compression algorithm \"{name}\" does not support long-distance mode"
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(option: &str) -> Result<Spec, String> {
        let (_, a, d) = split(option);
        let alg =
            Algorithm::parse(&a).ok_or(format!("unrecognized compression algorithm: \"{a}\""))?;
        parse(alg, d.as_deref())
    }

    #[test]
    fn postgresql_messages() {
        // the cases of PostgreSQL's 010_pg_basebackup.pl
        let cases = [
            (
                "extrasquishy",
                "unrecognized compression algorithm: \"extrasquishy\"",
            ),
            (
                "gzip:",
                "found empty string where a compression option was expected",
            ),
            ("gzip:thunk", "unrecognized compression option: \"thunk\""),
            (
                "gzip:level",
                "compression option \"level\" requires a value",
            ),
            (
                "gzip:level=",
                "value for compression option \"level\" must be an integer",
            ),
            (
                "gzip:level=high",
                "value for compression option \"level\" must be an integer",
            ),
            (
                "gzip:level=236",
                "compression algorithm \"gzip\" expects a compression level between 1 and 9",
            ),
            (
                "gzip:level=9,",
                "found empty string where a compression option was expected",
            ),
            (
                "gzip:workers=3",
                "compression algorithm \"gzip\" does not accept a worker count",
            ),
            (
                "gzip:long",
                "compression algorithm \"gzip\" does not support long-distance mode",
            ),
            (
                "none:1",
                "compression algorithm \"none\" does not accept a compression level",
            ),
        ];
        for (opt, want) in cases {
            let got = client(opt).unwrap_err();
            assert!(got.starts_with(want), "{opt}: {got}");
        }
        assert_eq!(client("1").unwrap().algorithm, Algorithm::Gzip);
        assert_eq!(client("1").unwrap().level, 1);
        assert_eq!(client("0").unwrap().algorithm, Algorithm::None);
        let z = client("zstd:level=5,workers=2").unwrap();
        assert_eq!((z.level, z.workers), (5, Some(2)));
        assert_eq!(client("zstd:7").unwrap().level, 7);
        assert_eq!(client("gzip").unwrap().level, -1);
        assert_eq!(
            split("server-gzip:5"),
            (Location::Server, "gzip".into(), Some("5".into()))
        );
    }
}
