//! The recipient CSV: streaming its rows once.
//!
//! This module owns reading the file (header row, UTF-8 with or without a
//! BOM, CRLF, quoted fields, the configured delimiter) and hashing every byte
//! as it goes by so the planner can tell later whether the file changed. A bad
//! row never stops the stream: it comes back as a [`RawRow`] whose `outcome`
//! says why, so every data row is counted. It must not hold the whole file in
//! memory, judge a phone cell (that is [`crate::phone`]), decide what happens
//! to a row (the planner does: invalid, duplicate, pending), or render templates.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::campaign::RecipientsSpec;

const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Why the recipient CSV cannot be read. Row-level problems are not errors:
/// they are [`RawRow::outcome`]s.
#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    #[error("cannot open recipient CSV {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "recipient CSV {} is empty: it needs a header row naming the columns, such as phone,name",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("the header of recipient CSV {} is not valid UTF-8: export the file as UTF-8", path.display())]
    HeaderNotUtf8 { path: PathBuf },
    #[error(
        "recipient CSV {} has no column '{column}' (its columns: {}): set phone_column in [recipients] or fix the header{}",
        path.display(),
        columns.join(", "),
        delimiter_hint(columns)
    )]
    NoPhoneColumn {
        path: PathBuf,
        column: String,
        columns: Vec<String>,
    },
    #[error(
        "the header of recipient CSV {} names column '{column}' twice (columns {first} and {second}): rename one",
        path.display()
    )]
    DuplicateColumn {
        path: PathBuf,
        column: String,
        first: usize,
        second: usize,
    },
    /// An I/O error part-way through: the stream ends here.
    #[error("cannot read recipient CSV {} after line {line}: {source}", path.display())]
    Read {
        path: PathBuf,
        line: u64,
        source: csv::Error,
    },
}

/// When the header came out as one column holding another likely delimiter,
/// the file was almost certainly split on the wrong character.
fn delimiter_hint(columns: &[String]) -> &'static str {
    match columns {
        [only] if only.contains(';') => {
            " (is it separated by ';'? set delimiter = \";\" in [recipients])"
        }
        [only] if only.contains('\t') => {
            " (is it separated by tabs? set delimiter = \"\\t\" in [recipients])"
        }
        [only] if only.contains(',') => {
            " (is it separated by ','? set delimiter = \",\" in [recipients])"
        }
        _ => "",
    }
}

/// One data row as read, before any judgement about its content.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    /// 1-based data row number (the header is not a row; blank lines are skipped).
    pub row: u64,
    /// 1-based line of the file where the record starts.
    pub line: u64,
    /// The fields, or why the row is unusable. An unusable row still counts.
    pub outcome: Result<csv::StringRecord, String>,
}

/// Streams the recipient CSV one row at a time.
///
/// ```no_run
/// # fn f(spec: &convers8_campaign::campaign::RecipientsSpec) -> Result<(), Box<dyn std::error::Error>> {
/// use convers8_campaign::recipients::RecipientReader;
/// let mut reader = RecipientReader::open(spec)?;
/// while let Some(row) = reader.next_row() {
///     let row = row?; // an I/O error ends the stream
///     match &row.outcome {
///         Ok(record) => { /* record.get(reader.phone_index()) ... */ }
///         Err(why) => eprintln!("row {} (line {}) {why}", row.row, row.line),
///     }
/// }
/// let sha256 = reader.sha256_hex();
/// # Ok(()) }
/// ```
pub struct RecipientReader {
    csv: csv::Reader<HashingReader>,
    source: PathBuf,
    headers: Vec<String>,
    phone_index: usize,
    name_index: Option<usize>,
    rows_read: u64,
    /// Set after EOF or an I/O error: nothing more will be read.
    done: bool,
    /// Field and byte counts of the last row, to size the next record once.
    last_shape: (usize, usize),
}

impl std::fmt::Debug for RecipientReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientReader")
            .field("source", &self.source)
            .field("headers", &self.headers)
            .field("rows_read", &self.rows_read)
            .finish_non_exhaustive()
    }
}

impl RecipientReader {
    /// Opens `spec.csv` and reads its header.
    pub fn open(spec: &RecipientsSpec) -> Result<RecipientReader, RecipientsError> {
        let file = File::open(&spec.csv).map_err(|source| RecipientsError::Open {
            path: spec.csv.clone(),
            source,
        })?;
        RecipientReader::from_reader(file, spec, &spec.csv)
    }

    /// Reads CSV from any byte source; `source` names it in messages.
    /// (`spec.csv` is ignored here.)
    pub fn from_reader<R: Read + Send + 'static>(
        reader: R,
        spec: &RecipientsSpec,
        source: &Path,
    ) -> Result<RecipientReader, RecipientsError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            // Ragged rows are row errors we report, not a reason to stop.
            .flexible(true)
            .delimiter(spec.delimiter)
            .buffer_capacity(64 * 1024)
            .from_reader(HashingReader::new(Box::new(reader)));
        let path = source.to_owned();
        let raw = match csv.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                return Err(RecipientsError::Read {
                    path,
                    line: 0,
                    source: e,
                });
            }
        };
        if raw.is_empty() {
            return Err(RecipientsError::Empty { path });
        }
        let mut headers = Vec::with_capacity(raw.len());
        for field in raw.iter() {
            let name = std::str::from_utf8(field)
                .map_err(|_| RecipientsError::HeaderNotUtf8 { path: path.clone() })?;
            headers.push(name.trim().to_owned());
        }
        // A one-column header that is blank means the first line was empty of names.
        if headers.iter().all(String::is_empty) {
            return Err(RecipientsError::Empty { path });
        }
        for (i, name) in headers.iter().enumerate() {
            // Several blank names are common (trailing delimiters from
            // spreadsheets) and harmless: no template can name them.
            if name.is_empty() {
                continue;
            }
            if let Some(j) = headers[i + 1..].iter().position(|n| n == name) {
                return Err(RecipientsError::DuplicateColumn {
                    path,
                    column: name.clone(),
                    first: i + 1,
                    second: i + j + 2,
                });
            }
        }
        let phone_index = find_column(&headers, &spec.phone_column).ok_or_else(|| {
            RecipientsError::NoPhoneColumn {
                path: path.clone(),
                column: spec.phone_column.clone(),
                columns: headers.clone(),
            }
        })?;
        let name_index = find_column(&headers, &spec.name_column);
        Ok(RecipientReader {
            csv,
            source: path,
            headers,
            phone_index,
            name_index,
            rows_read: 0,
            done: false,
            last_shape: (0, 0),
        })
    }

    /// Header names, BOM stripped and trimmed, in file order.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    pub fn phone_index(&self) -> usize {
        self.phone_index
    }

    /// `None` when the header has no name column: messages then go without a name.
    pub fn name_index(&self) -> Option<usize> {
        self.name_index
    }

    /// The index of a header, matched as the phone column is (exactly, else
    /// the one header equal ignoring case).
    pub fn column_index(&self, wanted: &str) -> Option<usize> {
        find_column(self.headers(), wanted)
    }

    pub fn has_name_column(&self) -> bool {
        self.name_index.is_some()
    }

    /// The next data row; `None` at the end. `Some(Err(..))` is an I/O error
    /// part-way through the file: the stream is over (later calls return
    /// `None`) and the planner should stop and report it, since the rows after
    /// it were never seen.
    pub fn next_row(&mut self) -> Option<Result<RawRow, RecipientsError>> {
        if self.done {
            return None;
        }
        let (fields, bytes) = self.last_shape;
        let mut record = csv::ByteRecord::with_capacity(bytes, fields);
        match self.csv.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => {
                self.done = true;
                return None;
            }
            Err(source) => {
                self.done = true;
                return Some(Err(RecipientsError::Read {
                    path: self.source.clone(),
                    line: self.csv.position().line(),
                    source,
                }));
            }
        }
        self.rows_read += 1;
        self.last_shape = (record.len(), record.as_slice().len());
        let line = self.start_line(&record);
        let outcome = if record.len() != self.headers.len() {
            Err(format!(
                "has {} field{}, the header has {}",
                record.len(),
                if record.len() == 1 { "" } else { "s" },
                self.headers.len()
            ))
        } else {
            csv::StringRecord::from_byte_record(record).map_err(|e| {
                let column = e.utf8_error().field();
                let column = self
                    .headers
                    .get(column)
                    .map(String::as_str)
                    .unwrap_or_default();
                format!("is not valid UTF-8 in column '{column}' (export the file as UTF-8)")
            })
        };
        Some(Ok(RawRow {
            row: self.rows_read,
            line,
            outcome,
        }))
    }

    /// The line the record just read starts on.
    ///
    /// csv's own record position is taken before the blank lines and the
    /// `\n` of a CRLF ahead of the record are skipped, so it can be a line or
    /// more early. Counting back from where the record ended is exact: the
    /// end line, less the newlines inside quoted fields, less the record's
    /// own `\n` terminator when it consumed one.
    fn start_line(&self, record: &csv::ByteRecord) -> u64 {
        let end = self.csv.position();
        let inside = record.as_slice().iter().filter(|&&b| b == b'\n').count() as u64;
        let terminator = match self.csv.get_ref().byte_before(end.byte()) {
            Some(b'\n') => 1,
            _ => 0,
        };
        end.line().saturating_sub(inside + terminator).max(1)
    }

    /// Data rows returned so far, good and bad.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Lowercase hex SHA-256 of every byte of the file (BOM included). Meant
    /// for after EOF; called earlier it reads the rest first so the hash is
    /// always of the whole file. If that read fails the hash covers only what
    /// was read, which cannot match a complete file's hash.
    pub fn sha256_hex(self) -> String {
        let mut rest = self.csv.into_inner();
        let _ = io::copy(&mut rest, &mut io::sink());
        format!("{:x}", rest.hasher.finalize())
    }
}

/// The column named `wanted`: exactly, else the one match ignoring ASCII case
/// (CRM exports like "Phone"); `None` if absent or ambiguous.
fn find_column(headers: &[String], wanted: &str) -> Option<usize> {
    headers.iter().position(|h| h == wanted).or_else(|| {
        let mut matches = headers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.eq_ignore_ascii_case(wanted));
        match (matches.next(), matches.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    })
}

/// Hashes every byte the CSV parser pulls, so the file is read once, and
/// hides a leading UTF-8 BOM from the parser (the hash still includes it).
struct HashingReader {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    /// Bytes read while looking for a BOM that turned out not to be one.
    head: [u8; 3],
    head_len: usize,
    head_pos: usize,
    started: bool,
    /// A copy of the bytes handed out by the last read and the stream offset
    /// of its first byte. csv's buffer only refills when it is empty, so the
    /// byte just before csv's position is always in here (see `start_line`).
    last: Vec<u8>,
    last_start: u64,
    handed_out: u64,
}

impl HashingReader {
    fn new(inner: Box<dyn Read + Send>) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            head: [0; 3],
            head_len: 0,
            head_pos: 0,
            started: false,
            last: Vec::new(),
            last_start: 0,
            handed_out: 0,
        }
    }

    /// The byte at stream offset `offset - 1`, if it is still at hand.
    fn byte_before(&self, offset: u64) -> Option<u8> {
        let at = offset.checked_sub(1)?.checked_sub(self.last_start)?;
        self.last.get(usize::try_from(at).ok()?).copied()
    }

    fn handed(&mut self, bytes: &[u8]) {
        self.last.clear();
        self.last.extend_from_slice(bytes);
        self.last_start = self.handed_out;
        self.handed_out += bytes.len() as u64;
    }

    fn read_head(&mut self) -> io::Result<()> {
        while self.head_len < UTF8_BOM.len() {
            match self.inner.read(&mut self.head[self.head_len..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.hasher
                        .update(&self.head[self.head_len..self.head_len + n]);
                    self.head_len += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.head[..self.head_len] == UTF8_BOM {
            self.head_len = 0;
        }
        self.started = true;
        Ok(())
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.started {
            self.read_head()?;
        }
        if self.head_pos < self.head_len {
            let n = (self.head_len - self.head_pos).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            self.handed(&buf[..n]);
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.handed(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delimiter: u8) -> RecipientsSpec {
        RecipientsSpec {
            csv: PathBuf::from("recipients.csv"),
            phone_column: "phone".into(),
            name_column: "name".into(),
            default_country: None,
            delimiter,
            timezone_column: None,
            fallback_timezone: None,
            exclude: Vec::new(),
        }
    }

    fn reader(bytes: &[u8], delimiter: u8) -> Result<RecipientReader, RecipientsError> {
        RecipientReader::from_reader(
            io::Cursor::new(bytes.to_vec()),
            &spec(delimiter),
            Path::new("recipients.csv"),
        )
    }

    fn rows(r: &mut RecipientReader) -> Vec<RawRow> {
        let mut out = Vec::new();
        while let Some(row) = r.next_row() {
            out.push(row.unwrap());
        }
        out
    }

    fn fields(row: &RawRow) -> Vec<&str> {
        row.outcome.as_ref().unwrap().iter().collect()
    }

    #[test]
    fn bom_crlf_and_quoted_newlines() {
        let data = "\u{feff}\"phone\",name ,city\r\n+254712345678,\"Achieng, A.\",\"Nairobi\r\nCBD\"\r\n\r\n+254712345679,Otieno,Kisumu\r\n";
        let mut r = reader(data.as_bytes(), b',').unwrap();
        assert_eq!(r.headers(), ["phone", "name", "city"]);
        assert_eq!((r.phone_index(), r.name_index()), (0, Some(1)));
        let rows = rows(&mut r);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            fields(&rows[0]),
            ["+254712345678", "Achieng, A.", "Nairobi\r\nCBD"]
        );
        assert_eq!((rows[0].row, rows[0].line), (1, 2));
        // The quoted newline moves the next record down; the blank line is skipped.
        assert_eq!((rows[1].row, rows[1].line), (2, 5));
        assert_eq!(r.rows_read(), 2);
    }

    #[test]
    fn lines_are_where_records_start() {
        for eol in ["\n", "\r\n"] {
            let data = [
                "phone,note",
                "",
                "+1,a",
                "",
                "",
                "+2,\"x",
                "y\"",
                "+3,b",
                "+4,c",
            ]
            .join(eol);
            let mut r = reader(data.as_bytes(), b',').unwrap();
            let lines: Vec<u64> = rows(&mut r).iter().map(|r| r.line).collect();
            assert_eq!(lines, [3, 6, 8, 9], "{eol:?}");
        }
    }

    #[test]
    fn other_delimiters() {
        let mut r = reader(b"phone;name\n+254712345678;Amina\n", b';').unwrap();
        assert_eq!(fields(&rows(&mut r)[0]), ["+254712345678", "Amina"]);
        let mut r = reader(b"name\tphone\nAmina\t+254712345678\n", b'\t').unwrap();
        assert_eq!(r.phone_index(), 1);
        assert_eq!(fields(&rows(&mut r)[0]), ["Amina", "+254712345678"]);
    }

    #[test]
    fn ragged_and_non_utf8_rows_are_row_errors_and_the_stream_goes_on() {
        let mut data = b"phone,name,city\n+1,a,b\n+2,a\n+3,\"".to_vec();
        data.extend_from_slice(b"Z\xfcrich\",c\n+4,a,b,c\n+5,d,e\n");
        let mut r = reader(&data, b',').unwrap();
        let rows = rows(&mut r);
        assert_eq!(rows.len(), 5);
        assert!(rows[0].outcome.is_ok());
        assert_eq!(
            rows[1].outcome,
            Err("has 2 fields, the header has 3".into())
        );
        assert_eq!(
            rows[2].outcome,
            Err("is not valid UTF-8 in column 'name' (export the file as UTF-8)".into())
        );
        assert_eq!(
            rows[3].outcome,
            Err("has 4 fields, the header has 3".into())
        );
        assert_eq!(fields(&rows[4]), ["+5", "d", "e"]);
        assert_eq!(
            rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(rows[4].line, 6);
        let mut r = reader(b"phone,name\n+1\n", b',').unwrap();
        assert_eq!(
            r.next_row().unwrap().unwrap().outcome,
            Err("has 1 field, the header has 2".into())
        );
    }

    #[test]
    fn header_problems() {
        let e = reader(b"", b',').unwrap_err().to_string();
        assert!(e.contains("recipient CSV recipients.csv is empty"), "{e}");
        let e = reader(b"\n\n", b',').unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = reader(b"mobile,name,city\n1,2,3\n", b',')
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "recipient CSV recipients.csv has no column 'phone' (its columns: mobile, name, city): set phone_column in [recipients] or fix the header"
        );
        let e = reader(b"phone;name\n", b',').unwrap_err().to_string();
        assert!(
            e.ends_with("(is it separated by ';'? set delimiter = \";\" in [recipients])"),
            "{e}"
        );
        let e = reader(b"phone,name,phone\n", b',').unwrap_err().to_string();
        assert!(
            e.contains("names column 'phone' twice (columns 1 and 3)"),
            "{e}"
        );
        let e = reader(b"phone,n\xe9\n", b',').unwrap_err().to_string();
        assert!(
            e.contains("header of recipient CSV recipients.csv is not valid UTF-8"),
            "{e}"
        );
        // No name column is allowed; blank trailing columns are too; case is forgiven.
        let r = reader(b"Phone,city,,\n", b',').unwrap();
        assert_eq!(r.phone_index(), 0);
        assert!(!r.has_name_column());
    }

    #[test]
    fn open_names_a_missing_file() {
        let mut s = spec(b',');
        s.csv = PathBuf::from("/nonexistent/dir/r.csv");
        let e = RecipientReader::open(&s).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot open recipient CSV /nonexistent/dir/r.csv: "),
            "{e}"
        );
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn hash_is_of_the_whole_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut data = "\u{feff}phone,name\r\n".as_bytes().to_vec();
        for i in 0..20_000 {
            data.extend_from_slice(format!("+2547123{i:05},\"Name {i}\"\r\n").as_bytes());
        }
        std::fs::write(&path, &data).unwrap();
        let mut s = spec(b',');
        s.csv = path;
        let mut r = RecipientReader::open(&s).unwrap();
        let all = rows(&mut r);
        assert_eq!(all.len(), 20_000);
        // Lines stay exact across csv's buffer refills.
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, row)| row.line == i as u64 + 2)
        );
        let expected = format!("{:x}", Sha256::digest(&data));
        assert_eq!(r.sha256_hex(), expected);
        // Asking early still hashes everything.
        let mut r = RecipientReader::open(&s).unwrap();
        r.next_row();
        assert_eq!(r.sha256_hex(), expected);
        // Tiny inputs, shorter than a BOM.
        let r = reader(b"ph", b',').unwrap_err();
        assert!(r.to_string().contains("no column 'phone'"));
        let r = RecipientReader::from_reader(
            io::Cursor::new(b"phone".to_vec()),
            &spec(b','),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(r.sha256_hex(), format!("{:x}", Sha256::digest(b"phone")));
    }

    #[test]
    fn io_error_mid_file_ends_the_stream() {
        struct Failing(io::Cursor<Vec<u8>>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(io::Error::other("disk on fire")),
                    n => Ok(n),
                }
            }
        }
        let mut r = RecipientReader::from_reader(
            Failing(io::Cursor::new(b"phone\n+1\n+2".to_vec())),
            &spec(b','),
            Path::new("r.csv"),
        )
        .unwrap();
        assert!(r.next_row().unwrap().is_ok());
        let e = r.next_row().unwrap().unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read recipient CSV r.csv after line"),
            "{e}"
        );
        assert!(e.contains("disk on fire"), "{e}");
        assert!(r.next_row().is_none());
    }

    proptest::proptest! {
        #[test]
        fn every_row_is_counted(rows in proptest::collection::vec("[a-z,\"\n\r]{0,12}", 0..20)) {
            let mut data = b"phone,name\n".to_vec();
            for r in &rows {
                data.extend_from_slice(r.as_bytes());
                data.push(b'\n');
            }
            let mut r = reader(&data, b',').unwrap();
            let mut n = 0;
            while let Some(row) = r.next_row() {
                n += 1;
                proptest::prop_assert_eq!(row.unwrap().row, n);
            }
        }
    }
}
