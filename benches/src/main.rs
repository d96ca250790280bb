//! The benchmark harness (issue 8 grows it): runs pgrepl and PostgreSQL's tools side by side on
//! one test-bed server and prints medians and ratios.

fn main() {
    eprintln!("pgrepl-benches: no benchmark jobs have landed yet; see README.md");
    std::process::exit(2);
}
