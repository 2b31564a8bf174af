//! pstats' text reports, byte for byte as Python 3.11 prints them:
//! `pstats.Stats(path).sort_stats(*keys).print_stats(*restrictions)` and its
//! `print_callers` / `print_callees` siblings.
//!
//! Known differences: restriction regexes are compiled by the `regex` crate,
//! so a pattern only Python's `re` accepts (look-around, back-references)
//! prints pstats' "Invalid regular expression" line instead of filtering;
//! and in repr'd regexes, the set of non-ASCII characters Python would escape
//! is approximated.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::Path;

use crate::stats::{EdgeStats, FuncStats, StatsTable};
use crate::tree::FuncKey;
use crate::Error;

/// A pstats sort order; see [`SortKey::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// `calls`, `ncalls`: call count, descending.
    Calls,
    /// `cumulative`, `cumtime`: cumulative time, descending.
    Cumulative,
    /// `filename`, `module`: file name, ascending.
    Filename,
    /// `line`: line number, ascending.
    Line,
    /// `name`: function name, ascending.
    Name,
    /// `nfl`: name, then file, then line.
    Nfl,
    /// `pcalls`: primitive call count, descending.
    Pcalls,
    /// `stdname`: the printed `file:line(name)`, ascending.
    Stdname,
    /// `time`, `tottime`: own time, descending.
    Time,
}

/// `Stats.sort_arg_dict_default`, in its order (which decides who owns a
/// shared abbreviation).
const SORT_WORDS: [(&str, SortKey); 13] = [
    ("calls", SortKey::Calls),
    ("ncalls", SortKey::Calls),
    ("cumtime", SortKey::Cumulative),
    ("cumulative", SortKey::Cumulative),
    ("filename", SortKey::Filename),
    ("line", SortKey::Line),
    ("module", SortKey::Filename),
    ("name", SortKey::Name),
    ("nfl", SortKey::Nfl),
    ("pcalls", SortKey::Pcalls),
    ("stdname", SortKey::Stdname),
    ("time", SortKey::Time),
    ("tottime", SortKey::Time),
];

/// Columns of pstats' sort tuple `(cc, nc, tt, ct, file, line, name, stdname)`.
#[derive(Clone, Copy)]
enum Field {
    Cc,
    Nc,
    Tt,
    Ct,
    File,
    Line,
    Name,
    Std,
}

impl SortKey {
    /// Accepts what `Stats.sort_stats` accepts: every name of
    /// `sort_arg_dict_default` and each unambiguous prefix of one, expanded
    /// exactly as `get_sort_arg_defs` does (so `cu` means cumtime while `cum`
    /// and `t` are ambiguous), plus the legacy integers -1, 0, 1 and 2.
    pub fn parse(word: &str) -> Result<SortKey, Error> {
        match word {
            "-1" => return Ok(SortKey::Stdname),
            "0" => return Ok(SortKey::Calls),
            "1" => return Ok(SortKey::Time),
            "2" => return Ok(SortKey::Cumulative),
            _ => {}
        }
        // get_sort_arg_defs: every prefix of every word, except that a prefix
        // seen twice is dropped, and a word stops at its first clash.
        let mut table: Vec<(String, SortKey)> = Vec::new();
        let mut bad: Vec<String> = Vec::new();
        for (w, key) in SORT_WORDS {
            let mut fragment = w;
            while !fragment.is_empty() {
                if table.iter().any(|(f, _)| f == fragment) {
                    bad.push(fragment.to_string());
                    break;
                }
                table.push((fragment.to_string(), key));
                fragment = &fragment[..fragment.len() - 1];
            }
        }
        table
            .into_iter()
            .find(|(f, _)| f == word && !bad.contains(f))
            .map(|(_, k)| k)
            .ok_or_else(|| {
                let names: Vec<&str> = SORT_WORDS.iter().map(|(w, _)| *w).collect();
                Error::InvalidArgument(format!(
                    "unknown sort key {word:?}; valid keys (unambiguous prefixes are accepted): {}",
                    names.join(", ")
                ))
            })
    }

    /// The phrase pstats prints after "Ordered by:".
    pub fn description(self) -> &'static str {
        match self {
            SortKey::Calls => "call count",
            SortKey::Cumulative => "cumulative time",
            SortKey::Filename => "file name",
            SortKey::Line => "line number",
            SortKey::Name => "function name",
            SortKey::Nfl => "name/file/line",
            SortKey::Pcalls => "primitive call count",
            SortKey::Stdname => "standard name",
            SortKey::Time => "internal time",
        }
    }

    /// Columns compared, with true for descending.
    fn fields(self) -> &'static [(Field, bool)] {
        match self {
            SortKey::Calls => &[(Field::Nc, true)],
            SortKey::Cumulative => &[(Field::Ct, true)],
            SortKey::Filename => &[(Field::File, false)],
            SortKey::Line => &[(Field::Line, false)],
            SortKey::Name => &[(Field::Name, false)],
            SortKey::Nfl => &[
                (Field::Name, false),
                (Field::File, false),
                (Field::Line, false),
            ],
            SortKey::Pcalls => &[(Field::Cc, true)],
            SortKey::Stdname => &[(Field::Std, false)],
            SortKey::Time => &[(Field::Tt, true)],
        }
    }
}

/// Compiles a pattern written for Python's `re` (as pstats' restrictions
/// are), where its syntax differs from the regex crate's in ways people
/// type: a `{` that does not start a repetition is a literal (`{built-in`,
/// `{method 'append'` pick out C functions), `{,n}` is `{0,n}`, and `\Z` is
/// the end of the text. Look-around and back-references have no equivalent
/// and are refused.
pub fn compile_python_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&python_regex_to_rust(pattern))
}

fn python_regex_to_rust(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                match chars[i + 1] {
                    'Z' if !in_class => out.push_str("\\z"),
                    // Literals in Python; word boundaries in the regex crate.
                    '<' | '>' => out.push(chars[i + 1]),
                    next => {
                        out.push(c);
                        out.push(next);
                    }
                }
                i += 2;
                continue;
            }
            // Set operators inside a class in the regex crate; literals in Python.
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && chars.get(i + 1) == Some(&'-') => out.push_str("\\-"),
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                i += 1;
                // A `]` first in the class (after an optional `^`) is a literal.
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            '[' if in_class => out.push_str("\\["), // (nested class syntax in the regex crate)
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '{' if !in_class => {
                // Python's rule (sre_parse): `{` digits [`,` digits] `}` repeats; else a literal.
                let mut j = i + 1;
                let lo_start = j;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let lo: String = chars[lo_start..j].iter().collect();
                let mut hi: Option<String> = None;
                if j < chars.len() && chars[j] == ',' {
                    j += 1;
                    let hi_start = j;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    hi = Some(chars[hi_start..j].iter().collect());
                }
                let closes = j < chars.len() && chars[j] == '}';
                if closes && !(lo.is_empty() && hi.is_none()) {
                    let lo = if lo.is_empty() { "0".to_string() } else { lo };
                    match hi {
                        None => out.push_str(&format!("{{{lo}}}")),
                        Some(h) => out.push_str(&format!("{{{lo},{h}}}")),
                    }
                    i = j + 1;
                    continue;
                }
                out.push_str("\\{");
            }
            '}' if !in_class => out.push_str("\\}"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// An argument of `print_stats(*amount)`.
#[derive(Clone, Debug, PartialEq)]
pub enum Restriction {
    /// Keep the first N rows (no effect unless 0 <= N < rows).
    Count(i64),
    /// Keep this fraction of the rows, rounded (no effect outside [0, 1)).
    Fraction(f64),
    /// Keep rows whose `file:line(name)` matches this regex (`re.search`).
    Regex(String),
}

impl Restriction {
    /// Reads a restriction as pstats' interactive browser does: an int, else
    /// a float, else a regex.
    pub fn parse(text: &str) -> Restriction {
        if let Ok(n) = text.trim().parse::<i64>() {
            return Restriction::Count(n);
        }
        match text.trim().parse::<f64>() {
            Ok(f) => Restriction::Fraction(f),
            Err(_) => Restriction::Regex(text.to_string()),
        }
    }

    /// A regex restriction, checked now so a bad pattern is reported up
    /// front (pstats itself only notes it in the report).
    pub fn regex(pattern: &str) -> Result<Restriction, Error> {
        match compile_python_regex(pattern) {
            Ok(_) => Ok(Restriction::Regex(pattern.to_string())),
            Err(e) => {
                // The regex crate explains over several lines; keep the gist.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .unwrap_or_else(|| text.lines().last().unwrap_or("").trim())
                    .to_string();
                Err(Error::InvalidArgument(format!(
                    "invalid regular expression {pattern:?}: {reason}"
                )))
            }
        }
    }

    fn repr(&self) -> String {
        match self {
            Restriction::Count(n) => n.to_string(),
            Restriction::Fraction(f) => py_float_repr(*f),
            Restriction::Regex(s) => py_str_repr(s),
        }
    }
}

/// pstats' `f8`: `"%8.3f" % x`.
fn f8(x: f64) -> String {
    format!("{:>8}", py_fixed(x, 3))
}

/// `"%.*f" % x` as Python formats it, infinities and NaN included.
fn py_fixed(x: f64, prec: usize) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:.prec$}")
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, in exponent
/// form when the decimal point would sit more than 16 places from them.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let decpt = exp + 1;
    let n = digits.len() as i32;
    if -4 < decpt && decpt <= 16 {
        let body = if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= n {
            format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            format!(
                "{}.{}",
                &digits[..decpt as usize],
                &digits[decpt as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let rest = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{rest}e{esign}{:02}", &digits[..1], exp.abs())
    }
}

/// Python's `repr(str)`.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !c.is_ascii() && !py_printable(c) => {
                let v = c as u32;
                let _ = if v < 0x100 {
                    write!(out, "\\x{v:02x}")
                } else if v < 0x10000 {
                    write!(out, "\\u{v:04x}")
                } else {
                    write!(out, "\\U{v:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// An approximation of `str.isprintable` for non-ASCII characters: control,
/// format, separator and private-use code points that commonly occur.
fn py_printable(c: char) -> bool {
    !matches!(c as u32,
        0x80..=0xa0 | 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000 | 0xd800..=0xf8ff
        | 0xfeff | 0xfff9..=0xfffb | 0xf0000..)
}

fn compare(a: &FuncStats, b: &FuncStats, keys: &[SortKey]) -> Ordering {
    fn ord<T: PartialOrd>(l: T, r: T, descending: bool) -> Ordering {
        // Like TupleComp.compare: incomparable values (NaN) count as equal.
        let o = if l < r {
            Ordering::Less
        } else if l > r {
            Ordering::Greater
        } else {
            Ordering::Equal
        };
        if descending {
            o.reverse()
        } else {
            o
        }
    }
    for key in keys {
        for &(field, desc) in key.fields() {
            let o = match field {
                Field::Cc => ord(a.cc, b.cc, desc),
                Field::Nc => ord(a.nc, b.nc, desc),
                Field::Tt => ord(a.tt, b.tt, desc),
                Field::Ct => ord(a.ct, b.ct, desc),
                Field::File => ord(&a.func.file, &b.func.file, desc),
                Field::Line => ord(a.func.line, b.func.line, desc),
                Field::Name => ord(&a.func.name, &b.func.name, desc),
                Field::Std => ord(a.func.std_string(), b.func.std_string(), desc),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
    }
    Ordering::Equal
}

/// A stable merge sort. Python's sort is stable, and for any consistent
/// comparison every stable sort agrees with it; unlike `slice::sort_by` this
/// one cannot panic when NaN times make the comparison inconsistent.
fn stable_sort<T: Copy>(items: &mut [T], mut cmp: impl FnMut(&T, &T) -> Ordering) {
    let n = items.len();
    let mut buf: Vec<T> = items.to_vec();
    let mut width = 1;
    while width < n {
        let mut start = 0;
        while start < n {
            let mid = (start + width).min(n);
            let end = (start + 2 * width).min(n);
            let (mut i, mut j, mut k) = (start, mid, start);
            while i < mid && j < end {
                if cmp(&items[j], &items[i]) == Ordering::Less {
                    buf[k] = items[j];
                    j += 1;
                } else {
                    buf[k] = items[i];
                    i += 1;
                }
                k += 1;
            }
            buf[k..k + (mid - i)].copy_from_slice(&items[i..mid]);
            k += mid - i;
            buf[k..k + (end - j)].copy_from_slice(&items[j..end]);
            start = end;
        }
        items.copy_from_slice(&buf);
        width *= 2;
    }
}

/// `Stats.get_print_list`: the rows to print (indices into the table), the
/// message before them and the name column width.
fn print_list(
    stats: &StatsTable,
    sort: &[SortKey],
    restrictions: &[Restriction],
) -> (usize, Vec<usize>, String) {
    let mut list: Vec<usize> = (0..stats.entries.len()).collect();
    let mut msg = if sort.is_empty() {
        "   Random listing order was used\n".to_string()
    } else {
        stable_sort(&mut list, |&a, &b| {
            compare(&stats.entries[a], &stats.entries[b], sort)
        });
        let names: Vec<&str> = sort.iter().map(|k| k.description()).collect();
        format!("   Ordered by: {}\n", names.join(", "))
    };
    for sel in restrictions {
        let before = list.len();
        match sel {
            Restriction::Regex(pattern) => match compile_python_regex(pattern) {
                Ok(re) => list.retain(|&i| re.is_match(&stats.entries[i].func.std_string())),
                Err(_) => {
                    let _ = writeln!(
                        msg,
                        "   <Invalid regular expression {}>",
                        py_str_repr(pattern)
                    );
                    continue;
                }
            },
            Restriction::Fraction(f) => {
                if (0.0..1.0).contains(f) {
                    // int(count * sel + .5)
                    let keep = (before as f64 * f + 0.5).trunc() as usize;
                    list.truncate(keep);
                }
            }
            Restriction::Count(n) => {
                if *n >= 0 && (*n as u64) < before as u64 {
                    list.truncate(*n as usize);
                }
            }
        }
        if list.len() != before {
            let _ = writeln!(
                msg,
                "   List reduced from {before} to {} due to restriction <{}>",
                list.len(),
                sel.repr()
            );
        }
    }
    let width = if list.len() < stats.entries.len() {
        list.iter()
            .map(|&i| name_len(&stats.entries[i].func))
            .max()
            .unwrap_or(0)
    } else {
        stats
            .entries
            .iter()
            .map(|e| name_len(&e.func))
            .max()
            .unwrap_or(0)
    };
    (width + 2, list, msg)
}

/// `len(func_std_string(func))`: Python counts code points.
fn name_len(func: &FuncKey) -> usize {
    func.shown_string().chars().count()
}

fn ljust(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n >= width {
        s.to_string()
    } else {
        format!("{s}{}", " ".repeat(width - n))
    }
}

/// The time stamp pstats puts before a file name: `time.ctime(mtime)` then
/// four spaces then the path as given. Just the path when the file cannot be
/// inspected, as pstats does.
pub fn file_label(path: &Path) -> String {
    let shown = path.display();
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
        });
    match mtime.and_then(ctime) {
        Some(stamp) => format!("{stamp}    {shown}"),
        None => shown.to_string(),
    }
}

/// `time.ctime(secs)` in the local time zone, e.g. `Mon Jan  1 12:00:00 2024`.
pub fn ctime(secs: i64) -> Option<String> {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, hour, min, sec, wday) = local_time(secs)?;
    Some(format!(
        "{} {}{:3} {:02}:{:02}:{:02} {}",
        DAYS.get(wday as usize)?,
        MONTHS.get(month as usize)?,
        day,
        hour,
        min,
        sec,
        year
    ))
}

#[cfg(unix)]
fn local_time(secs: i64) -> Option<(i64, u32, u32, u32, u32, u32, u32)> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: localtime_r only writes the `tm` we own and reads `t`.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        tm
    };
    Some((
        tm.tm_year as i64 + 1900,
        tm.tm_mon as u32,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
        tm.tm_sec as u32,
        tm.tm_wday as u32,
    ))
}

/// Without a portable local-time API, other platforms show UTC.
#[cfg(not(unix))]
fn local_time(secs: i64) -> Option<(i64, u32, u32, u32, u32, u32, u32)> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let wday = (days + 4).rem_euclid(7) as u32;
    Some((
        year,
        month - 1,
        day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        wday,
    ))
}

/// `print_stats`: the header (file label, call and time totals) and the
/// sorted, restricted table, as `pstats.Stats(path).sort_stats(*sort)
/// .print_stats(*restrictions)` prints it. `file_label` is the first line
/// pstats prints for a loaded file (see [`file_label`]); `None` prints none,
/// as for a `Stats` built from a live profiler. An empty `sort` lists rows in
/// dict order, as when `sort_stats` was not called.
pub fn print_stats(
    stats: &StatsTable,
    file_label: Option<&str>,
    sort: &[SortKey],
    restrictions: &[Restriction],
) -> String {
    let labels: Vec<&str> = file_label.into_iter().collect();
    print_stats_of_files(stats, &labels, stats.total_tt(), sort, restrictions)
}

/// [`print_stats`] for a table read from several files (pstats' `Stats(a, b,
/// …)`, see [`StatsTable::add`]): one label per file, and the total own time
/// as pstats adds it, file by file.
pub fn print_stats_of_files(
    stats: &StatsTable,
    file_labels: &[&str],
    total_tt: f64,
    sort: &[SortKey],
    restrictions: &[Restriction],
) -> String {
    let mut out = String::new();
    for label in file_labels {
        out.push_str(label);
        out.push('\n');
    }
    if !file_labels.is_empty() {
        out.push('\n');
    }
    let jprofile = FuncKey::new("jprofile", 0, "profiler");
    for e in &stats.entries {
        if e.callers.iter().any(|(k, _)| *k == jprofile) {
            let _ = writeln!(out, "         {}", e.func.name);
        }
    }
    let (total, prim) = (stats.total_calls(), stats.primitive_calls());
    let _ = write!(out, "         {total} function calls ");
    if total != prim {
        let _ = write!(out, "({prim} primitive calls) ");
    }
    let _ = writeln!(out, "in {} seconds", py_fixed(total_tt, 3));
    out.push('\n');
    let (_, list, msg) = print_list(stats, sort, restrictions);
    if !list.is_empty() {
        out.push_str(&msg);
        out.push('\n');
        out.push_str("   ncalls  tottime  percall  cumtime  percall filename:lineno(function)\n");
        for &i in &list {
            print_line(&mut out, &stats.entries[i]);
        }
        out.push_str("\n\n");
    }
    out
}

fn print_line(out: &mut String, e: &FuncStats) {
    let mut c = e.nc.to_string();
    if e.nc != e.cc {
        let _ = write!(c, "/{}", e.cc);
    }
    let _ = write!(out, "{c:>9} {} ", f8(e.tt));
    if e.nc == 0 {
        out.push_str("         ");
    } else {
        let _ = write!(out, "{} ", f8(e.tt / e.nc as f64));
    }
    let _ = write!(out, "{} ", f8(e.ct));
    if e.cc == 0 {
        out.push_str("         ");
    } else {
        let _ = write!(out, "{} ", f8(e.ct / e.cc as f64));
    }
    let _ = writeln!(out, "{}", e.func.shown_string());
}

fn print_call_heading(out: &mut String, stats: &StatsTable, width: usize, title: &str) {
    let _ = writeln!(out, "{}{title}", ljust("Function ", width));
    // pstats looks at the first non-empty callers dict's first edge: a
    // cProfile tuple gets the column titles, a bare count (the pure-Python
    // `profile` module's) none.
    let first = stats.entries.iter().find_map(|e| e.callers.first());
    if first.is_some_and(|(_, edge)| !edge.count_only) {
        let _ = writeln!(out, "{}    ncalls  tottime  cumtime", " ".repeat(width));
    }
}

/// `ct` of each function that has a row (pstats' `self.stats[func][3]`).
fn cumulative_times(stats: &StatsTable) -> rustc_hash::FxHashMap<&FuncKey, f64> {
    stats.entries.iter().map(|e| (&e.func, e.ct)).collect()
}

fn print_call_line(
    out: &mut String,
    width: usize,
    source: &FuncKey,
    calls: &[(&FuncKey, &EdgeStats)],
    arrow: &str,
    cumulative: &rustc_hash::FxHashMap<&FuncKey, f64>,
) {
    let _ = write!(out, "{}{arrow} ", ljust(&source.shown_string(), width));
    if calls.is_empty() {
        out.push('\n');
        return;
    }
    let mut sorted: Vec<&(&FuncKey, &EdgeStats)> = calls.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (n, (func, edge)) in sorted.into_iter().enumerate() {
        if edge.count_only {
            // pstats: '%s(%r) %s' % (name, count, f8(stats[func][3])), lined up past the arrow.
            let indent = if n == 0 { 0 } else { width + 3 };
            let ct = cumulative.get(func).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{}{}({}) {}",
                " ".repeat(indent),
                func.shown_string(),
                edge.nc,
                f8(ct)
            );
            continue;
        }
        let counts = if edge.nc != edge.cc {
            format!("{}/{}", edge.nc, edge.cc)
        } else {
            edge.nc.to_string()
        };
        let (pad, indent) = if n == 0 { (7, 0) } else { (9, width + 1) };
        let _ = writeln!(
            out,
            "{}{counts:>pad$} {} {}  {}",
            " ".repeat(indent),
            f8(edge.tt),
            f8(edge.ct),
            func.shown_string()
        );
    }
}

/// `print_callers`: for each listed function, who called it.
pub fn print_callers(stats: &StatsTable, sort: &[SortKey], restrictions: &[Restriction]) -> String {
    let mut out = String::new();
    let (width, list, msg) = print_list(stats, sort, restrictions);
    if list.is_empty() {
        return out;
    }
    out.push_str(&msg);
    out.push('\n');
    print_call_heading(&mut out, stats, width, "was called by...");
    let cumulative = cumulative_times(stats);
    for &i in &list {
        let e = &stats.entries[i];
        let calls: Vec<(&FuncKey, &EdgeStats)> = e.callers.iter().map(|(k, s)| (k, s)).collect();
        print_call_line(&mut out, width, &e.func, &calls, "<-", &cumulative);
    }
    out.push_str("\n\n");
    out
}

/// `print_callees`: for each listed function, what it called.
pub fn print_callees(stats: &StatsTable, sort: &[SortKey], restrictions: &[Restriction]) -> String {
    let mut out = String::new();
    let (width, list, msg) = print_list(stats, sort, restrictions);
    if list.is_empty() {
        return out;
    }
    // calc_callees: callees[caller][callee] = edge, later assignments winning.
    let mut callees: rustc_hash::FxHashMap<&FuncKey, Vec<(&FuncKey, &EdgeStats)>> =
        Default::default();
    let mut seen: rustc_hash::FxHashMap<(&FuncKey, &FuncKey), usize> = Default::default();
    for e in &stats.entries {
        for (caller, edge) in &e.callers {
            let list = callees.entry(caller).or_default();
            match seen.get(&(caller, &e.func)) {
                Some(&at) => list[at].1 = edge,
                None => {
                    seen.insert((caller, &e.func), list.len());
                    list.push((&e.func, edge));
                }
            }
        }
    }
    out.push_str(&msg);
    out.push('\n');
    print_call_heading(&mut out, stats, width, "called...");
    let cumulative = cumulative_times(stats);
    for &i in &list {
        let func = &stats.entries[i].func;
        let calls = callees.get(func).map(Vec::as_slice).unwrap_or(&[]);
        print_call_line(&mut out, width, func, calls, "->", &cumulative);
    }
    out.push_str("\n\n");
    out
}
