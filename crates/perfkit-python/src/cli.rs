//! The `perfkit` command line. Parsing (clap) and the file commands run in
//! Rust; the commands that run Python code (`record`, `demo`) hand over to
//! `perfkit.cli`. Every error is one line on stderr and exit code 2.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use perfkit_profile::table::{self, Restriction, SortKey};
use pyo3::prelude::*;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "perfkit", version = crate::VERSION, about = "perfkit: profile, view, parallelize and cache Python code.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ClockArg {
    Wall,
    Cpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// pstats-compatible .prof (with perfkit's exact tree)
    Prof,
    /// collapsed stacks, one `frame;frame;… weight` line per path
    Collapsed,
    /// speedscope JSON
    Speedscope,
    /// one self-contained HTML page with the viewer and the data (no server needed)
    Html,
    /// flame graph SVG
    Svg,
}

#[derive(Subcommand)]
enum Command {
    /// Profile a Python script or module, like `python -m cProfile`.
    Record {
        /// Where to write the profile [default: <script>.prof in the current directory]
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Clock that times calls: wall time or the thread's CPU time.
        #[arg(long, value_enum, default_value = "wall")]
        clock: ClockArg,
        /// Record Python frames only; time in C functions stays in their callers.
        #[arg(long)]
        no_builtins: bool,
        /// Record this process alone, as cProfile does: perfkit.Parallel's worker processes run
        /// their tasks unrecorded.
        #[arg(long)]
        no_workers: bool,
        /// Run a library module as a script, like `python -m`.
        #[arg(short = 'm')]
        module: bool,
        /// Also print the pstats table sorted by this key, as `python -m cProfile -s` does.
        #[arg(short = 's', long = "sort", value_name = "KEY")]
        sort: Option<String>,
        /// The script (or, with -m, the module) and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "SCRIPT [ARGS]..."
        )]
        command: Vec<OsString>,
    },
    /// Print the pstats table of a profile (perfkit or cProfile file); of several, summed
    /// as pstats' `Stats(a, b, …)` sums them.
    Stats {
        /// Profiles (perfkit or cProfile .prof, collapsed stacks, speedscope JSON); several are summed.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Sort key, as pstats names them (cumulative, tottime, calls, name, …); repeat for ties.
        // (allow_negative_numbers: pstats' old key -1, as `record -s -1` takes it)
        #[arg(
            short,
            long,
            default_value = "cumulative",
            allow_negative_numbers = true
        )]
        sort: Vec<String>,
        /// Show at most N rows (or a fraction such as 0.1; as in pstats, a negative N keeps them
        /// all). -l and -f repeat, each applied to what the ones before it kept, in the order
        /// given, as pstats' print_stats("foo", 10, 0.5) applies its restrictions.
        #[arg(short, long, allow_negative_numbers = true)]
        limit: Vec<String>,
        /// Show only rows whose `file:line(function)` matches this regular expression (Python's
        /// re syntax, less look-around and back-references).
        #[arg(short, long)]
        filter: Vec<String>,
        /// File names without their directories, rows that then coincide summed (pstats' strip_dirs).
        #[arg(long)]
        strip_dirs: bool,
        /// For each listed function, who called it (pstats' print_callers), instead of the table.
        #[arg(long)]
        callers: bool,
        /// For each listed function, what it called (pstats' print_callees), instead of the table.
        #[arg(long)]
        callees: bool,
    },
    /// Convert a profile to another format, chosen by --format or by the output's extension
    /// (.prof, .txt/.collapsed/.folded, .speedscope.json, .html, .svg). Two profiles and
    /// .html: the page of `perfkit view before after`, the diff.
    Export {
        /// The profile to convert (.prof from perfkit or cProfile, collapsed stacks, speedscope
        /// JSON); or, for an HTML diff, the run before and the run after.
        #[arg(required = true, num_args = 1..=2, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Where to write it; - for stdout (with --format).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
    },
    /// Open profiles in the browser (like snakeviz): icicle and sunburst charts, the
    /// pstats table, callers/callees. Two files: the second compared with the first.
    View {
        /// One profile (perfkit, cProfile, collapsed stacks, speedscope), or two to compare.
        #[arg(required = true, num_args = 1..=2, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Address or host name to listen on; the default serves this machine only (snakeviz's -H/--hostname).
        #[arg(
            short = 'H',
            long,
            visible_alias = "hostname",
            default_value = "127.0.0.1"
        )]
        host: String,
        /// Port to listen on [default: a free one].
        #[arg(short, long)]
        port: Option<u16>,
        /// Do not open a browser, only print the address (snakeviz's -s/--server).
        #[arg(short = 's', long, visible_alias = "server")]
        no_browser: bool,
    },
    /// Profile a bundled workload, show its hot spots, parallelize the hot loop
    /// (reporting the speedup), then cache that step (reporting the time saved).
    Demo,
}

/// Runs the command line; returns the process exit code. Arguments come as
/// the OS gave them (sys.argv's surrogate escapes): a file name that is not
/// UTF-8 is a file name, not a traceback.
#[pyfunction]
pub fn cli_main(py: Python<'_>, argv: Vec<OsString>) -> PyResult<i32> {
    let parsed = Cli::command()
        .try_get_matches_from(&argv)
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return Ok(e.exit_code());
        }
    };
    let result = match cli.command {
        Command::Record {
            output,
            clock,
            no_builtins,
            no_workers,
            module,
            sort,
            command,
        } => {
            if let Some(key) = &sort {
                // Refused before the program runs, not after.
                if let Err(e) = SortKey::parse(key) {
                    note(format_args!("perfkit: error: {e}"));
                    return Ok(2);
                }
            }
            let clock = match clock {
                ClockArg::Wall => "wall",
                ClockArg::Cpu => "cpu",
            };
            let (target, args) = command.split_first().expect("clap requires one value");
            return py
                .import("perfkit.cli")?
                .call_method1(
                    "record",
                    (
                        target,
                        module,
                        args.to_vec(),
                        output,
                        clock,
                        !no_builtins,
                        sort,
                        !no_workers,
                    ),
                )?
                .extract();
        }
        Command::Demo => return py.import("perfkit.demo")?.call_method0("main")?.extract(),
        Command::View {
            files,
            host,
            port,
            no_browser,
        } => match crate::view::serve(py, &files, &host, port.unwrap_or(0), !no_browser) {
            Ok(code) => return Ok(code),
            Err(msg) => Err(msg),
        },
        Command::Stats {
            files,
            sort,
            limit,
            filter,
            strip_dirs,
            callers,
            callees,
        } => {
            // -l and -f as given, in the order given (clap keeps each's apart, with their places).
            let at = |id: &str| -> Vec<usize> {
                matches
                    .subcommand_matches("stats")
                    .and_then(|m| m.indices_of(id))
                    .map(Iterator::collect)
                    .unwrap_or_default()
            };
            let mut restrictions: Vec<(usize, RestrictionArg)> = Vec::new();
            restrictions.extend(
                at("limit")
                    .into_iter()
                    .zip(limit.into_iter().map(RestrictionArg::Limit)),
            );
            restrictions.extend(
                at("filter")
                    .into_iter()
                    .zip(filter.into_iter().map(RestrictionArg::Filter)),
            );
            restrictions.sort_by_key(|(place, _)| *place);
            let restrictions: Vec<RestrictionArg> =
                restrictions.into_iter().map(|(_, r)| r).collect();
            py.detach(|| {
                let shown = Shown {
                    strip_dirs,
                    callers,
                    callees,
                };
                stats(&files, &sort, &restrictions, shown)
            })
        }
        Command::Export {
            files,
            output,
            format,
        } => py.detach(|| export(&files, &output, format)),
    };
    Ok(match result {
        Ok(()) => 0,
        Err(msg) => {
            note(format_args!("perfkit: error: {msg}"));
            2
        }
    })
}

/// A `perfkit stats` restriction as given: `-l` (a count or a fraction) or `-f` (a regex).
enum RestrictionArg {
    Limit(String),
    Filter(String),
}

/// What `perfkit stats` prints besides its sort and restrictions.
struct Shown {
    strip_dirs: bool,
    callers: bool,
    callees: bool,
}

fn stats(
    files: &[PathBuf],
    sort: &[String],
    given: &[RestrictionArg],
    shown: Shown,
) -> Result<(), String> {
    let keys = sort
        .iter()
        .map(|s| SortKey::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Applied in the order given, each to what the ones before it kept, as
    // pstats' print_stats(*amount) applies its arguments.
    let mut restrictions = Vec::with_capacity(given.len());
    for r in given {
        restrictions.push(match r {
            RestrictionArg::Filter(re) => {
                Restriction::regex(re).map_err(|e| format!("bad --filter: {e}"))?
            }
            RestrictionArg::Limit(l) => match Restriction::parse(l) {
                Restriction::Regex(_) => {
                    return Err(format!("--limit takes a count or a fraction, not {l:?}"))
                }
                r => r,
            },
        });
    }
    // pstats' Stats(a, b, c): a, then the others added last first (its
    // `add` walks its arguments reversed), files and totals likewise.
    let mut order: Vec<&PathBuf> = files.iter().take(1).collect();
    order.extend(files.iter().skip(1).rev());
    let mut combined = perfkit_profile::StatsTable::default();
    let mut labels = Vec::with_capacity(order.len());
    let mut total_tt = 0.0;
    for file in order {
        let profile = perfkit_profile::load(file).map_err(|e| e.to_string())?;
        total_tt += profile.stats.total_tt();
        combined.add(&profile.stats);
        labels.push(table::file_label(file));
    }
    if shown.strip_dirs {
        combined = combined.strip_dirs();
    }
    let mut text = String::new();
    if !shown.callers && !shown.callees {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        text = table::print_stats_of_files(&combined, &labels, total_tt, &keys, &restrictions);
    }
    if shown.callers {
        text.push_str(&table::print_callers(&combined, &keys, &restrictions));
    }
    if shown.callees {
        text.push_str(&table::print_callees(&combined, &keys, &restrictions));
    }
    write_stdout(text.as_bytes())
}

fn export(files: &[PathBuf], output: &Path, format: Option<ExportFormat>) -> Result<(), String> {
    let to_stdout = output.as_os_str() == "-";
    let format = match format {
        Some(f) => f,
        None if to_stdout => {
            return Err("-o - writes to stdout: name the format with --format".into())
        }
        None => format_from_extension(output)?,
    };
    let file = match (files, format) {
        ([file], _) => file,
        (_, ExportFormat::Html) => {
            let viewer = crate::view::load_viewer(files)?;
            return write_export(output, &perfkit_view::export::html(&viewer).into_bytes());
        }
        _ => {
            return Err(
                "two profiles export only to HTML (a diff page, as perfkit view shows two)".into(),
            )
        }
    };
    let profile = perfkit_profile::load(file).map_err(|e| e.to_string())?;
    let bytes = match format {
        ExportFormat::Prof => perfkit_profile::prof::profile_to_bytes(&profile),
        ExportFormat::Collapsed => {
            perfkit_profile::collapsed::write_bounded(&profile.tree)?.into_bytes()
        }
        ExportFormat::Speedscope => perfkit_profile::speedscope::write(&profile.tree).into_bytes(),
        ExportFormat::Html => {
            let viewer = perfkit_view::Viewer::single(file.display().to_string(), profile);
            perfkit_view::export::html(&viewer).into_bytes()
        }
        ExportFormat::Svg => {
            let title = format!("perfkit: {}", file.display());
            perfkit_view::export::flamegraph_svg(&profile.tree, &title)?
        }
    };
    write_export(output, &bytes)
}

/// Writes an export to `output` (atomically), or to stdout for `-`.
fn write_export(output: &Path, bytes: &[u8]) -> Result<(), String> {
    if output.as_os_str() == "-" {
        return write_stdout(bytes);
    }
    write_atomic(output, bytes)?;
    note(format_args!("perfkit: wrote {}", output.display()));
    Ok(())
}

fn format_from_extension(output: &Path) -> Result<ExportFormat, String> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".prof") || name.ends_with(".pstats") {
        Ok(ExportFormat::Prof)
    } else if name.ends_with(".json") {
        Ok(ExportFormat::Speedscope)
    } else if name.ends_with(".txt") || name.ends_with(".collapsed") || name.ends_with(".folded") {
        Ok(ExportFormat::Collapsed)
    } else if name.ends_with(".html") || name.ends_with(".htm") {
        Ok(ExportFormat::Html)
    } else if name.ends_with(".svg") {
        Ok(ExportFormat::Svg)
    } else {
        Err(format!(
            "cannot tell the format of {} from its extension: use .prof, .txt/.collapsed/.folded, .speedscope.json, .html, .svg, or --format",
            output.display()
        ))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    perfkit_profile::write_atomic(path, bytes).map_err(|e| e.to_string())
}

/// A line for the user on stderr. One that cannot be written (stderr closed,
/// or /dev/full) is lost rather than ending the command in a panic.
/// Writes one line to stderr; a control character in it (from a file's
/// name, say) is written as an escape, so the line stays one line.
pub(crate) fn note(line: std::fmt::Arguments<'_>) {
    let text = line.to_string();
    let text: String = if text.chars().any(char::is_control) {
        text.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        text
    };
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn write_stdout(bytes: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`perfkit stats f | head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}
