//! pstats' report text, compared byte for byte with what Python 3.11 printed
//! for the same files (tests/fixtures/*.expected.json, see the README there).

mod common;

use perfkit_profile::table::{self, py_float_repr, py_str_repr};
use perfkit_profile::{prof, Restriction, SortKey, StatsTable};

/// Writes tests/fixtures/perfkit_tree.prof; run by hand (see the README).
#[test]
#[ignore]
fn write_fixture() {
    if std::env::var_os("PERFKIT_WRITE_FIXTURES").is_some() {
        prof::write_file(&common::fixture("perfkit_tree.prof"), &common::rich_tree()).unwrap();
    }
}

fn restriction(v: &serde_json::Value) -> Restriction {
    match v {
        serde_json::Value::String(s) => Restriction::Regex(s.clone()),
        n if n.is_i64() => Restriction::Count(n.as_i64().unwrap()),
        n => Restriction::Fraction(n.as_f64().unwrap()),
    }
}

fn check_expected(stats: &StatsTable, expected_file: &str) {
    let text = std::fs::read_to_string(common::fixture(expected_file)).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let sort: Vec<SortKey> = case["sort"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| SortKey::parse(s.as_str().unwrap()).unwrap())
            .collect();
        let restrictions: Vec<Restriction> = case["restrictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(restriction)
            .collect();
        let got = match case["method"].as_str().unwrap() {
            "print_stats" => table::print_stats(stats, None, &sort, &restrictions),
            "print_callers" => table::print_callers(stats, &sort, &restrictions),
            "print_callees" => table::print_callees(stats, &sort, &restrictions),
            other => panic!("unknown method {other}"),
        };
        let want = case["output"].as_str().unwrap();
        assert!(
            got == want,
            "{expected_file}: {} {:?} {:?}\n--- python\n{want}\n--- perfkit\n{got}",
            case["method"],
            case["sort"],
            case["restrictions"]
        );
    }
}

#[test]
fn matches_python_on_cprofile_files() {
    for (prof_file, expected) in [
        ("recursive_py311.prof", "recursive_py311.expected.json"),
        ("recursive_py313.prof", "recursive_py313.expected.json"),
    ] {
        let profile = prof::read_file(&common::fixture(prof_file)).unwrap();
        check_expected(&profile.stats, expected);
    }
}

#[test]
fn matches_python_on_a_tree_written_by_perfkit() {
    // The table derived in memory must print what Python printed for the
    // file written from it: this covers the writer and the derivation.
    check_expected(
        &common::rich_tree().to_stats(),
        "perfkit_tree.expected.json",
    );
    let profile = prof::read_file(&common::fixture("perfkit_tree.prof")).unwrap();
    check_expected(&profile.stats, "perfkit_tree.expected.json");
}

#[test]
fn header_lines() {
    let stats = common::rich_tree().to_stats();
    let text = table::print_stats(
        &stats,
        Some("Mon Jan  1 00:00:00 2024    x.prof"),
        &[SortKey::Time],
        &[Restriction::Count(1)],
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Mon Jan  1 00:00:00 2024    x.prof");
    assert_eq!(lines[1], "");
    // 10**17 + 3_000_000_010 + 34 calls, 9 of them recursive (recurse 4, ping 1, idle 4).
    assert!(
        lines[2].starts_with(
            "         100000003000000044 function calls (100000003000000035 primitive calls) in "
        ),
        "{}",
        lines[2]
    );
    assert_eq!(lines[4], "   Ordered by: internal time");
    assert_eq!(
        lines[5],
        "   List reduced from 13 to 1 due to restriction <1>"
    );
    assert_eq!(
        lines[7],
        "   ncalls  tottime  percall  cumtime  percall filename:lineno(function)"
    );
}

#[test]
fn empty_selection_prints_no_table() {
    let stats = common::rich_tree().to_stats();
    let text = table::print_stats(
        &stats,
        None,
        &[SortKey::Name],
        &[Restriction::Regex("zzz".into())],
    );
    assert!(!text.contains("Ordered by"));
    assert!(text.ends_with("seconds\n\n"));
    assert_eq!(
        table::print_callers(&stats, &[], &[Restriction::Regex("zzz".into())]),
        ""
    );
}

#[test]
fn sort_key_abbreviations_follow_pstats() {
    use SortKey::*;
    for (word, key) in [
        ("calls", Calls),
        ("ncalls", Calls),
        ("ca", Calls),
        ("nc", Calls),
        ("cumulative", Cumulative),
        ("cumtime", Cumulative),
        ("cu", Cumulative),
        ("cumu", Cumulative),
        ("file", Filename),
        ("filename", Filename),
        ("f", Filename),
        ("module", Filename),
        ("mod", Filename),
        ("l", Line),
        ("name", Name),
        ("na", Name),
        ("nfl", Nfl),
        ("nf", Nfl),
        ("pcalls", Pcalls),
        ("p", Pcalls),
        ("stdname", Stdname),
        ("s", Stdname),
        ("time", Time),
        ("ti", Time),
        ("tottime", Time),
        ("to", Time),
        ("-1", Stdname),
        ("0", Calls),
        ("1", Time),
        ("2", Cumulative),
    ] {
        assert_eq!(SortKey::parse(word).unwrap(), key, "{word}");
    }
    // Prefixes pstats drops as ambiguous.
    for word in ["c", "n", "cum", "t", "", "cumulativex", "3"] {
        let err = SortKey::parse(word).unwrap_err().to_string();
        assert!(err.contains("unknown sort key"), "{word}: {err}");
        assert!(!err.contains('\n'));
    }
}

#[test]
fn restriction_parse_matches_pstats_browser() {
    assert_eq!(Restriction::parse("10"), Restriction::Count(10));
    assert_eq!(Restriction::parse("-1"), Restriction::Count(-1));
    assert_eq!(Restriction::parse("0.5"), Restriction::Fraction(0.5));
    assert_eq!(Restriction::parse("fib"), Restriction::Regex("fib".into()));
    assert_eq!(
        Restriction::regex("f.b").unwrap(),
        Restriction::Regex("f.b".into())
    );
    let err = Restriction::regex("(").unwrap_err().to_string();
    assert_eq!(err, "invalid regular expression \"(\": unclosed group");
}

#[test]
fn python_reprs() {
    // Each expected string is Python's repr() of the same value.
    for (x, want) in [
        (0.1, "0.1"),
        (0.5, "0.5"),
        (1.0, "1.0"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (123456.789, "123456.789"),
        (-2.5e-7, "-2.5e-07"),
        (f64::INFINITY, "inf"),
        (-0.0, "-0.0"),
        (1.5e300, "1.5e+300"),
    ] {
        assert_eq!(py_float_repr(x), want);
    }
    assert_eq!(py_str_repr("fib"), "'fib'");
    assert_eq!(py_str_repr("it's"), "\"it's\"");
    assert_eq!(py_str_repr("a'b\"c"), "'a\\'b\"c'");
    assert_eq!(py_str_repr("tab\there\\"), "'tab\\there\\\\'");
    assert_eq!(py_str_repr("é\u{7f}"), "'é\\x7f'");
}

#[test]
fn ctime_format() {
    // The local zone is unknown here, so check the shape: `Www Mmm dd hh:mm:ss yyyy`.
    let s = table::ctime(1_700_000_000).unwrap();
    let re = regex::Regex::new(
        r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d 20\d\d$",
    )
    .unwrap();
    assert!(re.is_match(&s), "{s}");
    let label = table::file_label(&common::fixture("recursive_py311.prof"));
    assert!(label.ends_with("recursive_py311.prof"), "{label}");
    assert!(re.is_match(label.split("    ").next().unwrap()), "{label}");
}

#[test]
fn nan_times_do_not_panic() {
    let mut stats = common::rich_tree().to_stats();
    stats.entries[1].tt = f64::NAN;
    stats.entries[2].ct = f64::INFINITY;
    let text = table::print_stats(&stats, None, &[SortKey::Time, SortKey::Cumulative], &[]);
    assert!(text.contains("     nan"));
    assert!(text.contains("     inf"));
}
