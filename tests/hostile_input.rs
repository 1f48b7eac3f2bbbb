//! Hostile input: recipient files and templates built to break the planner.
//!
//! Property tests (`proptest`) feed the library's planner random
//! CSVs — random bytes, quoting, BOMs, ragged rows, huge fields, invalid
//! UTF-8, NULs — under random templates, and check that planning never
//! panics, that every data row the reader reads gets exactly one state, and
//! that every problem names its row (a whole-file error names the file). Then
//! a corpus of named bad files in `tests/data/hostile/` goes through the real
//! binary (`run --dry-run`), each with the one-line error or the per-row
//! states it must produce; the expectations are listed next to the files'
//! names below, so a change of behaviour shows up as a failing name. Last,
//! templates nested thousands deep go through the real binary, which must
//! refuse them in one line rather than overflow its stack.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::plan::{self, PlanWrite, RowProblem};
use convers8_campaign::recipients::RecipientReader;
use convers8_campaign::state::{RecipientState, StateDb, StateRead};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Property tests, at the library level.
// ---------------------------------------------------------------------------

/// One CSV cell, raw bytes as a spreadsheet or an attacker might write them.
fn cell() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0u32..50).prop_map(|n| format!("+2547{:08}", 11_000_000 + n).into_bytes()),
        2 => (0u32..50).prop_map(|n| format!("07{:08}", 11_000_000 + n).into_bytes()),
        2 => "[0-9+() -]{0,16}".prop_map(String::into_bytes),
        3 => "\\PC{0,12}".prop_map(String::into_bytes),
        // Quoted, with doubled quotes, delimiters and line breaks inside.
        2 => "[a-z,;\"\r\n {}]{0,12}"
            .prop_map(|s| format!("\"{}\"", s.replace('"', "\"\"")).into_bytes()),
        // Unbalanced quotes.
        1 => "[a-z\"]{0,6}".prop_map(|s| format!("\"{s}").into_bytes()),
        2 => prop::collection::vec(any::<u8>(), 0..12),
        2 => prop::sample::select(vec![
            "{{", "}}", "{{name}}", "{{vars.secret}}", "{{#each this}}x{{/each}}",
            "=HYPERLINK(\"http://evil.example\",\"x\")", "\u{feff}", "\0", "\u{202e}",
            "\u{0}+254711000001", "José", "\u{1F389}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // Latin-1 bytes that are not UTF-8.
        1 => Just(b"Jos\xe9 M\xfcller".to_vec()),
        // Huge fields, rarely: past the API's 4096-character text limit.
        1 => (4_000usize..70_000).prop_map(|n| vec![b'x'; n]),
    ]
}

/// A header row: usually names a phone column, sometimes not, sometimes
/// twice, sometimes with a BOM or odd case.
fn header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => Just(b"phone,name".to_vec()),
        2 => Just(b"phone,name,city".to_vec()),
        1 => Just(b"\xef\xbb\xbfphone,name".to_vec()),
        1 => Just(b"Phone,Name".to_vec()),
        1 => Just(b"name,phone,,".to_vec()),
        1 => Just(b"phone,phone".to_vec()),
        1 => Just(b"mobile,name".to_vec()),
        1 => Just(b"phone;name".to_vec()),
        1 => Just(b"\"ph\"\"one\",\"na\nme\"".to_vec()),
        1 => Just(Vec::new()),
        1 => prop::collection::vec(cell(), 1..4).prop_map(|cells| cells.join(&b',')),
    ]
}

/// A whole CSV file: a header and ragged rows with mixed line endings, or
/// random bytes after a plausible header, or nothing but random bytes.
fn csv_file() -> impl Strategy<Value = Vec<u8>> {
    let ending = prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r", b"\n\n"]);
    // Mostly as wide as the usual headers with a phone-like first cell, so
    // rendering is reached; sometimes ragged.
    let phone = prop_oneof![
        3 => (0u32..50).prop_map(|n| format!("+2547{:08}", 11_000_000 + n).into_bytes()),
        1 => cell(),
    ];
    let cells = prop_oneof![
        4 => (phone.clone(), cell()).prop_map(|(p, c)| vec![p, c]),
        1 => (phone, cell(), cell()).prop_map(|(p, c, d)| vec![p, c, d]),
        2 => prop::collection::vec(cell(), 0..5),
    ];
    let row =
        (cells, ending.clone()).prop_map(|(cells, end)| [cells.join(&b','), end.to_vec()].concat());
    prop_oneof![
        6 => (header(), ending, prop::collection::vec(row, 0..24), any::<bool>()).prop_map(
            |(header, end, rows, trailing_newline)| {
                let mut file = [header, end.to_vec()].concat();
                for r in rows {
                    file.extend(r);
                }
                if !trailing_newline {
                    while file.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        file.pop();
                    }
                }
                file
            }
        ),
        1 => prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|tail| [b"phone,name\n".to_vec(), tail].concat()),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// A `text` template made of pieces that are fine, odd, or broken.
fn template() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "Hi ",
            "{{name}}",
            "{{phone}}",
            "{{city}}",
            "{{vars.secret}}",
            "{{vars.nope}}",
            "{{recipient.phone}}",
            "{{recipient.row}}",
            "{{recipient.age}}",
            "{{",
            "}}",
            "{{#if name}}yes{{/if}}",
            "{{{name}}}",
            "{{> partial}}",
            "{{lookup this \"name\"}}",
            "{{#each this}}{{@key}}={{this}};{{/each}}",
            "\\",
            "\"",
            "é",
            "\u{1F389}",
            "\n",
            "{{name",
            "{{#each}}",
            "{{!-- note --}}",
            "{{len name}}",
        ]),
        0..6,
    )
    .prop_map(|pieces| pieces.concat())
}

/// The campaign TOML around a template, with the CSV beside it.
fn campaign_text(text: &str, delimiter: Option<char>, country: bool) -> String {
    let text = toml::Value::String(text.to_owned()).to_string();
    let delimiter = delimiter
        .map(|d| format!("delimiter = \"{d}\"\n"))
        .unwrap_or_default();
    let country = if country {
        "default_country = \"KE\"\n"
    } else {
        ""
    };
    format!(
        "[campaign]\nname = \"hostile\"\n\n[recipients]\ncsv = \"recipients.csv\"\n{country}{delimiter}\n\
         [vars]\nsecret = \"s3cret\"\n\n[message]\ntype = \"text\"\n[message.content]\ntext = {text}\n"
    )
}

const ROW_CODES: [&str; 5] = [
    "bad_row",
    "invalid_phone",
    "missing_variable",
    "content_rule",
    "duplicate",
];

/// Plans `csv` under `text` and checks every invariant; `Err` names the
/// broken one (proptest then shrinks the input).
fn check_plan(
    csv: &[u8],
    text: &str,
    delimiter: Option<char>,
    country: bool,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("campaign.toml");
    std::fs::write(dir.path().join("recipients.csv"), csv).expect("write the CSV");
    let Ok(campaign) = Campaign::from_toml_str(&campaign_text(text, delimiter, country), &file)
    else {
        // A template the campaign loader refuses is not the planner's business.
        return Ok(());
    };
    let mut db = StateDb::in_memory().expect("in-memory state");
    let mut problems: Vec<RowProblem> = Vec::new();
    let planned = plan::plan_campaign(&mut db, &campaign, PlanWrite::Fresh, |p| {
        problems.push(p.clone())
    });
    let summary = match planned {
        Ok(summary) => summary,
        Err(err) => {
            // A whole-file error (no header, no phone column) names the file
            // it is about; a template that cannot serve any row names its
            // place in the campaign.
            let message = err.to_string();
            prop_assert!(
                message.contains("recipients.csv")
                    || message.contains("campaign.toml")
                    || message.starts_with("template message.content"),
                "an error that names neither file nor template: {message}"
            );
            prop_assert_eq!(
                db.counts().expect("counts").total(),
                0,
                "a failed plan leaves no rows"
            );
            return Ok(());
        }
    };

    // The reader, run on its own, is the count of data rows.
    let mut reader = RecipientReader::open(&campaign.recipients).expect("the header read once");
    let mut read = 0u64;
    while let Some(row) = reader.next_row() {
        prop_assert!(row.is_ok(), "the reader failed after the planner did not");
        read += 1;
    }
    prop_assert_eq!(summary.rows, read, "rows planned vs rows the reader reads");

    let counts = db.counts().expect("counts");
    prop_assert_eq!(counts.total(), read, "one state per data row: {:?}", counts);
    prop_assert_eq!(
        (counts.pending, counts.invalid, counts.duplicate),
        (summary.pending, summary.invalid, summary.duplicate)
    );
    prop_assert_eq!(
        counts.sending + counts.sent + counts.failed + counts.uncertain,
        0
    );

    // Every row number 1..=rows exactly once, and each problem names its row.
    let mut states: BTreeMap<u64, (RecipientState, Option<String>)> = BTreeMap::new();
    db.for_each_recipient(&[], &mut |r| {
        let again = states.insert(r.row, (r.state, r.error_code.clone()));
        assert!(again.is_none(), "row {} has two states", r.row);
        Ok(())
    })
    .expect("walk the state");
    prop_assert!(
        states.keys().copied().eq(1..=read),
        "row numbers are not 1..={}",
        read
    );
    prop_assert_eq!(problems.len() as u64, counts.invalid + counts.duplicate);
    for p in &problems {
        prop_assert!(p.row >= 1 && p.row <= read, "problem names row {}", p.row);
        prop_assert!(ROW_CODES.contains(&p.code.as_str()), "code {}", p.code);
        prop_assert!(!p.details.is_empty(), "row {} has no reason", p.row);
        let (state, code) = &states[&p.row];
        prop_assert_eq!(*state, p.state, "row {}", p.row);
        prop_assert_eq!(code.as_deref(), Some(p.code.as_str()), "row {}", p.row);
    }
    // A pending row carries a body that is the JSON the API gets.
    for (row, (state, _)) in &states {
        if *state == RecipientState::Pending {
            let (phone, body) = db
                .body_for_row(*row)
                .expect("read a body")
                .unwrap_or_else(|| panic!("pending row {row} has no body"));
            let body: serde_json::Value = serde_json::from_str(&body).expect("the body is JSON");
            prop_assert_eq!(body["to"].as_str(), Some(phone.as_str()));
            prop_assert!(phone.starts_with('+'), "row {} phone {}", row, phone);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Shrinking a 70 kB field is slow and tells little more than the failure.
        max_shrink_iters: 256,
        // Failures print their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_csvs_under_a_plain_template_plan_every_row_once(csv in csv_file()) {
        check_plan(&csv, "Hi {{name}}", None, true)?;
    }

    #[test]
    fn random_csvs_under_random_templates_never_panic(
        csv in csv_file(),
        text in template(),
        delimiter in prop::option::of(prop::sample::select(vec![';', '\t', '|'])),
        country in any::<bool>(),
    ) {
        check_plan(&csv, &text, delimiter, country)?;
    }
}

// ---------------------------------------------------------------------------
// The corpus, through the real binary.
// ---------------------------------------------------------------------------

/// What one named file must produce.
enum Expect {
    /// `run --dry-run` exits 1 with exactly one `error:` line holding these.
    Error(&'static [&'static str]),
    /// It plans; each data row ends in this state, with this code (or none),
    /// and `needle` inside its body (pending) or its reason (otherwise).
    Rows(&'static [(RecipientState, Option<&'static str>, &'static str)]),
}

use RecipientState::{Invalid, Pending};

const CORPUS: &[(&str, Expect)] = &[
    (
        "empty.csv",
        Expect::Error(&["empty.csv is empty", "header row"]),
    ),
    ("header_only.csv", Expect::Rows(&[])),
    (
        "no_phone_column.csv",
        Expect::Error(&["has no column 'phone'", "its columns: mobile, name"]),
    ),
    (
        "semicolon_delimited.csv",
        Expect::Error(&["has no column 'phone'", "delimiter = \";\""]),
    ),
    (
        // A 1 MB name renders past the API's 4096-character text limit.
        "huge_field.csv",
        Expect::Rows(&[
            (Invalid, Some("content_rule"), "at most 4096"),
            (Pending, None, "\"Hi Baraka\""),
        ]),
    ),
    (
        // A NUL byte makes its row invalid, naming the column: it never
        // reaches a recipient as U+0000.
        "nul_bytes.csv",
        Expect::Rows(&[
            (
                Invalid,
                Some("bad_row"),
                "NUL character (byte 0) in column 'name'",
            ),
            (
                Invalid,
                Some("bad_row"),
                "NUL character (byte 0) in column 'phone'",
            ),
            (Pending, None, "\"Hi Chausiku\""),
        ]),
    ),
    (
        "latin1.csv",
        Expect::Rows(&[
            (
                Invalid,
                Some("bad_row"),
                "line 2: is not valid UTF-8 in column 'name'",
            ),
            (Pending, None, "\"Hi Amani\""),
        ]),
    ),
    (
        // A WhatsApp message is not a spreadsheet: formula-looking names are
        // sent exactly as written.
        "formula_names.csv",
        Expect::Rows(&[
            (
                Pending,
                None,
                r#"Hi =HYPERLINK(\"http://evil.example\",\"click\")"#,
            ),
            (Pending, None, "Hi +SUM(A1:A9)"),
            (Pending, None, "Hi @cmd|' /C calc'!A0"),
            (Pending, None, "Hi -2+3"),
        ]),
    ),
    (
        // Cells are data, never template text: `{{vars.secret}}` in a cell
        // must not reveal the campaign's [vars].
        "template_cells.csv",
        Expect::Rows(&[
            (Pending, None, "Hi {{vars.secret}}"),
            (Pending, None, "Hi {{#each x}}y{{/each}}"),
            (Pending, None, "Hi }}{{name"),
        ]),
    ),
    (
        "bom_crlf.csv",
        Expect::Rows(&[
            (Pending, None, "\"Hi Amani\""),
            (Pending, None, "\"Hi Baraka\""),
        ]),
    ),
    (
        "ragged_rows.csv",
        Expect::Rows(&[
            (
                Invalid,
                Some("bad_row"),
                "line 2: has 1 field, the header has 2",
            ),
            (
                Invalid,
                Some("bad_row"),
                "line 3: has 3 fields, the header has 2",
            ),
            (Pending, None, "\"Hi Chausiku\""),
        ]),
    ),
];

fn corpus_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hostile")
        .join(name)
}

#[test]
fn every_corpus_file_has_an_expectation_and_every_expectation_a_file() {
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_file(""))
        .expect("tests/data/hostile")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = CORPUS.iter().map(|(n, _)| (*n).to_owned()).collect();
    expected.sort();
    assert_eq!(on_disk, expected);
}

#[test]
fn corpus_files_give_their_error_or_their_row_states() {
    for (name, expect) in CORPUS {
        let csv = corpus_file(name);
        let csv_toml = toml::Value::String(csv.display().to_string()).to_string();
        let dir = CampaignDir::new(
            &format!(
                "[campaign]\nname = \"hostile\"\n\n[recipients]\ncsv = {csv_toml}\ndefault_country = \"KE\"\n\n\
                 [vars]\nsecret = \"s3cret\"\n\n[message]\ntype = \"text\"\n[message.content]\ntext = \"Hi {{{{name}}}}\"\n"
            ),
            "unused\n",
        );
        let out = bare_bin()
            .args(["run", "--dry-run"])
            .arg(dir.toml())
            .output()
            .expect("binary runs");
        let err = stderr(&out);
        match expect {
            Expect::Error(needles) => {
                assert_eq!(out.status.code(), Some(1), "{name}: {err}");
                let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
                assert_eq!(errors.len(), 1, "{name}: one error line, got: {err}");
                assert_eq!(err.lines().last(), errors.first().copied(), "{name}: {err}");
                for needle in *needles {
                    assert!(
                        errors[0].contains(needle),
                        "{name}: {needle:?} not in {err}"
                    );
                }
            }
            Expect::Rows(rows) => {
                assert!(out.status.success(), "{name}: {err}");
                let db = StateDb::open_read_only(&dir.state()).expect("the state opens");
                let mut got = Vec::new();
                db.for_each_recipient(&[], &mut |r| {
                    got.push(r);
                    Ok(())
                })
                .expect("walk the state");
                assert_eq!(got.len(), rows.len(), "{name}: rows");
                for (i, (r, (state, code, needle))) in got.iter().zip(rows.iter()).enumerate() {
                    assert_eq!(r.row, i as u64 + 1, "{name}");
                    assert_eq!(r.state, *state, "{name} row {}: {r:?}", r.row);
                    assert_eq!(r.error_code.as_deref(), *code, "{name} row {}", r.row);
                    let text = if *state == Pending {
                        db.body_for_row(r.row)
                            .expect("read the body")
                            .map(|(_, body)| body)
                            .unwrap_or_default()
                    } else {
                        r.error_details.clone().unwrap_or_default()
                    };
                    assert!(
                        text.contains(needle),
                        "{name} row {}: {needle:?} not in {text:?}",
                        r.row
                    );
                    assert!(!text.contains("s3cret"), "{name}: a cell reached [vars]");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Templates nested deep enough to overflow handlebars' stack.
// ---------------------------------------------------------------------------

/// 2,000 nested `{{#if}}` (or `{{else if}}` links, or subexpressions) once
/// overflowed the stack in handlebars and aborted the process (exit 134, no
/// message). Both commands that plan must refuse the template in one line
/// naming the campaign file and the template's key, and exit 1.
#[test]
fn deeply_nested_templates_are_refused_in_one_line() {
    let deep = 2_000;
    for text in [
        format!(
            "{}Hi {{{{name}}}}{}",
            "{{#if name}}".repeat(deep),
            "{{/if}}".repeat(deep)
        ),
        format!(
            "{{{{#if name}}}}Hi{}{{{{/if}}}}",
            "{{else if name}}Hi".repeat(deep)
        ),
        format!(
            "{{{{eq {}name{} 1}}}}",
            "(eq ".repeat(deep),
            ")".repeat(deep)
        ),
    ] {
        let dir = CampaignDir::new(
            &campaign_text(&text, None, true),
            "phone,name\n+254711000001,Amina\n",
        );
        for command in [&["validate"][..], &["run", "--dry-run"]] {
            let out = bare_bin()
                .args(command)
                .arg(dir.toml())
                .output()
                .expect("binary runs");
            let err = stderr(&out);
            let what = format!("{command:?} on {}", &text[..30]);
            // A signal (the abort of a stack overflow) has no exit code.
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what}: {:?}\n{err}",
                out.status
            );
            // `run` says what it plans first; the error is one line, the last.
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{what}: one error line, got: {err}");
            assert_eq!(err.lines().last(), errors.first().copied(), "{what}: {err}");
            let line = errors[0];
            assert!(
                line.contains(&dir.toml().display().to_string()),
                "{what}: the campaign file is not named: {line}"
            );
            assert!(
                line.contains("template message.content.text nests more than 64 levels"),
                "{what}: {line}"
            );
            if dir.state().exists() {
                assert_eq!(dir.counts().total(), 0, "{what}: a refused plan left rows");
            }
        }
    }
}
