//! Phone numbers: the one place a cell or a flag becomes an E.164 number.
//!
//! This module owns [`E164`], a number that has been parsed and validated
//! (`+` then digits, as the Convers8 API and the state file store it), and
//! [`PhoneError`], why a text is not one. An `E164` can only be built by
//! [`E164::parse`], so code holding one never has to wonder whether it was
//! normalised: the planner, the contacts import and the command line all go
//! through here and agree on what a number is and on the words used when it
//! is not. Parsing is on the planner's hot path (once per CSV row), so it
//! allocates only the E.164 text on success. This module must not read files,
//! decide what happens to a row with a bad number, or know about flags
//! (callers reword the advice for their own settings).

use std::fmt;

use phonenumber::country::Id;
use serde::Serialize;

/// A valid phone number in E.164 form (`+254712345678`).
///
/// Built only by [`E164::parse`]; serialises as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct E164(String);

/// Why a text is not a phone number. Its `Display` is a reason to append to
/// "row N: " (or to a flag's name); `shown` is the text as written, trimmed,
/// at most 40 characters and with control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing but whitespace.
    #[error("empty phone")]
    Empty,
    /// A national number (no `+`, no `00`) and no default country to read it in.
    #[error("'{shown}' has no country code: write it with + or set default_country")]
    NoCountryCode { shown: String },
    /// Parsed as a number of `country`, but not a valid one there.
    #[error("'{shown}' is not a valid number for {}", country.as_ref())]
    InvalidForCountry { shown: String, country: Id },
    /// Not a phone number of any known country.
    #[error("'{shown}' is not a valid phone number")]
    Invalid { shown: String },
}

impl E164 {
    /// Turns a phone cell into E.164 (`+254712345678`), or says why it cannot.
    ///
    /// Spaces, dashes, dots and parentheses are fine. A number written with `+`
    /// or the `00` international prefix carries its own country; any other needs
    /// `default_country`, whose national format (trunk `0` and all) is then
    /// understood.
    pub fn parse(raw: &str, default_country: Option<Id>) -> Result<E164, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        let first_digit_or_plus = trimmed
            .trim_start_matches(|c: char| !(c == '+' || c.is_ascii_digit()))
            .as_bytes();
        let international = match first_digit_or_plus {
            [b'+', ..] => true,
            // `00` is the international prefix across most of the world. The
            // parser only knows the default country's own prefix (`011` in the
            // US, `000` in Kenya), so rewrite it as `+`.
            [b'0', b'0', ..] => {
                let digits = &trimmed[trimmed.len() - first_digit_or_plus.len() + 2..];
                if let Ok(e164) = parse_valid(&format!("+{digits}"), None) {
                    return Ok(e164);
                }
                false
            }
            _ => false,
        };
        if !international && default_country.is_none() {
            return Err(PhoneError::NoCountryCode {
                shown: shorten(trimmed),
            });
        }
        let country = if international { None } else { default_country };
        parse_valid(trimmed, country).map_err(|number| {
            let shown = shorten(trimmed);
            let country = match (number, country) {
                (_, Some(id)) => Some(id),
                (Some(parsed), None) => parsed.country().id(),
                (None, None) => None,
            };
            match country {
                Some(country) => PhoneError::InvalidForCountry { shown, country },
                None => PhoneError::Invalid { shown },
            }
        })
    }

    /// The number as text: `+` and digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number as text, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl AsRef<str> for E164 {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The number if `text` parses and is valid; otherwise the parsed number if there was one.
fn parse_valid(text: &str, country: Option<Id>) -> Result<E164, Option<phonenumber::PhoneNumber>> {
    let number = phonenumber::parse(country, text).map_err(|_| None)?;
    if phonenumber::is_valid(&number) {
        // What `number.format().mode(Mode::E164)` writes, without its pattern
        // matching for the national layout (unused in E.164, a third of the
        // cost) and without its `fmt::Error`, which `to_string` turns into a panic.
        Ok(E164(format!(
            "+{}{}",
            number.code().value(),
            number.national()
        )))
    } else {
        Err(Some(number))
    }
}

/// Keeps messages one short line when a cell holds a paragraph.
/// A cell quoted in a message: at most 40 characters, control characters
/// escaped so the message stays on one line.
fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(raw: &str, country: Option<Id>) -> Result<String, String> {
        E164::parse(raw, country)
            .map(E164::into_string)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn national_numbers_with_a_default_country() {
        for (country, raw, e164) in [
            (Id::KE, "0712 345 678", "+254712345678"),
            (Id::KE, "712345678", "+254712345678"),
            (Id::KE, "+254 (712) 345-678", "+254712345678"),
            (Id::NG, "0803 123 4567", "+2348031234567"),
            (Id::GB, "07400 123456", "+447400123456"),
            (Id::GB, "020 7946 0958", "+442079460958"),
            (Id::US, "(201) 555-0123", "+12015550123"),
            (Id::US, "201.555.0123", "+12015550123"),
            (Id::IN, "098765 43210", "+919876543210"),
            (Id::IN, "9876543210", "+919876543210"),
            // An international number beats the default country.
            (Id::US, "+254712345678", "+254712345678"),
            (Id::US, "00254712345678", "+254712345678"),
        ] {
            assert_eq!(
                E164::parse(raw, Some(country)).as_ref().map(E164::as_str),
                Ok(e164),
                "{raw} in {country:?}"
            );
        }
    }

    #[test]
    fn e164_matches_the_crate_formatter() {
        // Italian fixed lines keep their leading zero after the country code.
        for (raw, country) in [
            ("+39 06 6982 0000", None),
            ("0712345678", Some(Id::KE)),
            ("+1 201 555 0123", None),
        ] {
            let number = phonenumber::parse(country, raw).unwrap();
            let expected = number.format().mode(phonenumber::Mode::E164).to_string();
            assert_eq!(e164(raw, country).unwrap(), expected, "{raw}");
        }
        assert_eq!(e164("+39 06 6982 0000", None).unwrap(), "+390669820000");
    }

    #[test]
    fn international_numbers_need_no_default() {
        for (raw, e164) in [
            ("+254712345678", "+254712345678"),
            ("  +44 7400 123456 ", "+447400123456"),
            ("+1 201-555-0123", "+12015550123"),
            ("00254712345678", "+254712345678"),
            ("0044 7400 123456", "+447400123456"),
        ] {
            assert_eq!(
                E164::parse(raw, None).as_ref().map(E164::as_str),
                Ok(e164),
                "{raw}"
            );
        }
    }

    #[test]
    fn phone_errors_say_why() {
        assert_eq!(e164("", Some(Id::KE)), Err("empty phone".into()));
        assert_eq!(e164("   ", None), Err("empty phone".into()));
        assert_eq!(
            e164("0712", Some(Id::KE)),
            Err("'0712' is not a valid number for KE".into())
        );
        assert_eq!(
            e164("12345", None),
            Err("'12345' has no country code: write it with + or set default_country".into())
        );
        assert_eq!(
            e164("0712345678", None),
            Err("'0712345678' has no country code: write it with + or set default_country".into())
        );
        assert_eq!(
            e164("+2547123", None),
            Err("'+2547123' is not a valid number for KE".into())
        );
        assert_eq!(
            e164("+999 123 456", None),
            Err("'+999 123 456' is not a valid phone number".into())
        );
        assert_eq!(
            e164("call me", Some(Id::KE)),
            Err("'call me' is not a valid number for KE".into())
        );
        let long = "+".to_owned() + &"9".repeat(100);
        assert!(e164(&long, None).unwrap_err().contains('…'));
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(E164::parse(" \t", None), Err(PhoneError::Empty));
        assert_eq!(
            E164::parse("0712\n345", None),
            Err(PhoneError::NoCountryCode {
                shown: "0712\\n345".into()
            })
        );
        assert_eq!(
            E164::parse("+2547123", Some(Id::US)),
            Err(PhoneError::InvalidForCountry {
                shown: "+2547123".into(),
                country: Id::KE
            })
        );
        assert_eq!(
            E164::parse("+999 123 456", None),
            Err(PhoneError::Invalid {
                shown: "+999 123 456".into()
            })
        );
    }

    #[test]
    fn the_number_reads_and_serialises_as_its_text() {
        let n = E164::parse("0712 345 678", Some(Id::KE)).unwrap();
        assert_eq!(n.as_str(), "+254712345678");
        assert_eq!(AsRef::<str>::as_ref(&n), "+254712345678");
        assert_eq!(n.to_string(), "+254712345678");
        assert_eq!(format!("[{n:>14}]"), "[ +254712345678]");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"+254712345678\"");
        assert_eq!(n.into_string(), "+254712345678");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,30}", ke in proptest::bool::ANY) {
            let _ = E164::parse(&s, ke.then_some(Id::KE));
        }

        #[test]
        fn parse_never_panics_on_phone_like_text(s in "[+0-9 ()./-]{0,25}") {
            let _ = E164::parse(&s, Some(Id::KE));
            let _ = E164::parse(&s, None);
        }

        #[test]
        fn a_parsed_number_is_plus_and_digits(s in "[+0-9 ()./-]{0,25}") {
            if let Ok(n) = E164::parse(&s, Some(Id::KE)) {
                let digits = n.as_str().strip_prefix('+');
                proptest::prop_assert!(
                    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
                    "{}", n
                );
            }
        }
    }

    /// `cargo test --lib phone::tests::parse_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn parse_speed() {
        let numbers: Vec<String> = (0..20_000)
            .map(|i| format!("07{:08}", 12_000_000 + i))
            .collect();
        let start = std::time::Instant::now();
        let mut ok = 0;
        for n in &numbers {
            ok += E164::parse(n, Some(Id::KE)).is_ok() as usize;
        }
        let national = start.elapsed();
        let intl: Vec<String> = numbers.iter().map(|n| format!("+254{}", &n[1..])).collect();
        let start = std::time::Instant::now();
        for n in &intl {
            ok += E164::parse(n, None).is_ok() as usize;
        }
        let international = start.elapsed();
        println!(
            "E164::parse: national {:.2} µs/call, international {:.2} µs/call ({ok} ok)",
            national.as_secs_f64() * 1e6 / numbers.len() as f64,
            international.as_secs_f64() * 1e6 / intl.len() as f64
        );
    }
}
