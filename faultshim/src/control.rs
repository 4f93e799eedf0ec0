//! Control-file parsing: `key = value` lines that describe the faults to inject.
//!
//! A parsed [`Rules`] value is immutable apart from its per-version call counters, which start at
//! zero every time a new version of the control file is loaded.

use std::sync::atomic::{AtomicU64, Ordering};

use cryptoki_sys::{CK_FLAGS, CK_RV, CK_ULONG, CK_UNAVAILABLE_INFORMATION};

use crate::funcs::Func;

/// Injection rules for one PKCS#11 function.
#[derive(Debug, Default)]
pub(crate) struct FnRule {
    /// `fault.X`: return this CKR instead of calling the real function.
    pub(crate) fault: Option<CK_RV>,
    /// `nth.X`: only the n-th call (1-based) since this version was loaded fails.
    pub(crate) nth: Option<u64>,
    /// `every.X`: every k-th call since this version was loaded fails.
    pub(crate) every: Option<u64>,
    /// `delay_ms.X`: sleep this long before forwarding (or failing).
    pub(crate) delay_ms: Option<u64>,
    /// Calls of this function seen while this version was active and a fault was configured.
    calls: AtomicU64,
}

/// One loaded version of the control file.
#[derive(Debug)]
pub(crate) struct Rules {
    fns: Vec<FnRule>,
    /// `corrupt_every`: flip a bit of every k-th successful data-returning `C_Sign`.
    pub(crate) corrupt_every: Option<u64>,
    /// `max_sessions`: limit on sessions open through the shim (also reported in token info).
    pub(crate) max_sessions: Option<u64>,
    /// `report_max_sessions`: override only the `ulMax*SessionCount` reported in token info.
    pub(crate) report_max_sessions: Option<CK_ULONG>,
    /// `token_flags_set`: bits ORed into `CK_TOKEN_INFO.flags`.
    pub(crate) token_flags_set: CK_FLAGS,
    /// `generation`: echoed into the stats file.
    pub(crate) generation: u64,
    /// Successful data-returning `C_Sign` calls while this version was active.
    signatures: AtomicU64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            fns: Func::ALL.iter().map(|_| FnRule::default()).collect(),
            corrupt_every: None,
            max_sessions: None,
            report_max_sessions: None,
            token_flags_set: 0,
            generation: 0,
            signatures: AtomicU64::new(0),
        }
    }
}

impl Rules {
    /// The rule for `func`.
    pub(crate) fn rule(&self, func: Func) -> &FnRule {
        &self.fns[func.index()]
    }

    /// Decides whether this call of `func` gets an injected fault, counting it.
    pub(crate) fn decide_fault(&self, func: Func) -> Option<CK_RV> {
        let rule = self.rule(func);
        let fault = rule.fault?;
        let n = rule.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match (rule.nth, rule.every) {
            (None, None) => Some(fault),
            (nth, every) => {
                let hit = nth == Some(n) || every.is_some_and(|k| n % k == 0);
                hit.then_some(fault)
            }
        }
    }

    /// Counts one successful data-returning `C_Sign`; true if its output must be corrupted.
    pub(crate) fn should_corrupt_signature(&self) -> bool {
        let n = self.signatures.fetch_add(1, Ordering::SeqCst) + 1;
        self.corrupt_every.is_some_and(|k| n % k == 0)
    }

    /// The session limit reported through `C_GetTokenInfo`, if overridden.
    pub(crate) fn reported_max_sessions(&self) -> Option<CK_ULONG> {
        self.report_max_sessions.or_else(|| {
            self.max_sessions
                .map(|n| CK_ULONG::try_from(n).unwrap_or(CK_ULONG::MAX))
        })
    }
}

/// Parses a control file. Problems are returned as messages; the offending line is ignored.
pub(crate) fn parse(text: &str) -> (Rules, Vec<String>) {
    let mut rules = Rules::default();
    let mut problems = Vec::new();
    for (lineno, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!(
                "line {}: expected `key = value`, got `{line}`",
                lineno + 1
            ));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if let Err(msg) = apply(&mut rules, key, value) {
            problems.push(format!("line {}: {msg}", lineno + 1));
        }
    }
    for func in Func::ALL {
        let rule = rules.rule(*func);
        if rule.fault.is_none() && (rule.nth.is_some() || rule.every.is_some()) {
            problems.push(format!(
                "nth/every.{0} has no effect without fault.{0}",
                func.name()
            ));
        }
    }
    (rules, problems)
}

fn apply(rules: &mut Rules, key: &str, value: &str) -> Result<(), String> {
    if let Some((kind, fname)) = key.split_once('.') {
        let func = Func::from_name(fname).ok_or_else(|| {
            format!("unknown control key `{key}` (no PKCS#11 function `{fname}`)")
        })?;
        let rule = &mut rules.fns[func.index()];
        match kind {
            "fault" => rule.fault = Some(parse_ckr(value).map_err(|e| format!("{key}: {e}"))?),
            "nth" => rule.nth = Some(parse_positive(value).map_err(|e| format!("{key}: {e}"))?),
            "every" => rule.every = Some(parse_positive(value).map_err(|e| format!("{key}: {e}"))?),
            "delay_ms" => {
                rule.delay_ms = Some(parse_num(value).map_err(|e| format!("{key}: {e}"))?)
            }
            _ => return Err(format!("unknown control key `{key}`")),
        }
        return Ok(());
    }
    let num = || parse_num(value).map_err(|e| format!("{key}: {e}"));
    match key {
        "corrupt_every" => {
            rules.corrupt_every = Some(parse_positive(value).map_err(|e| format!("{key}: {e}"))?);
        }
        "max_sessions" => rules.max_sessions = Some(num()?),
        "report_max_sessions" => {
            rules.report_max_sessions = Some(if value.eq_ignore_ascii_case("unavailable") {
                CK_UNAVAILABLE_INFORMATION
            } else {
                to_ulong(num()?)?
            });
        }
        "token_flags_set" => rules.token_flags_set = to_ulong(num()?)?,
        "generation" => rules.generation = num()?,
        _ => return Err(format!("unknown control key `{key}`")),
    }
    Ok(())
}

fn to_ulong(n: u64) -> Result<CK_ULONG, String> {
    CK_ULONG::try_from(n).map_err(|_| format!("{n} does not fit in CK_ULONG"))
}

/// Decimal or `0x` hexadecimal, `_` separators allowed.
fn parse_num(value: &str) -> Result<u64, String> {
    let cleaned = value.replace('_', "");
    let parsed = match cleaned
        .strip_prefix("0x")
        .or_else(|| cleaned.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => cleaned.parse(),
    };
    parsed.map_err(|_| format!("`{value}` is not a number (decimal or 0x hex)"))
}

fn parse_positive(value: &str) -> Result<u64, String> {
    match parse_num(value)? {
        0 => Err("must be at least 1".to_owned()),
        n => Ok(n),
    }
}

/// A numeric CKR, or one of the symbolic names in [`CKR_NAMES`].
fn parse_ckr(value: &str) -> Result<CK_RV, String> {
    if let Some((_, rv)) = CKR_NAMES.iter().find(|(name, _)| *name == value) {
        return Ok(*rv);
    }
    to_ulong(
        parse_num(value)
            .map_err(|_| format!("`{value}` is neither a number nor a known CKR_* name"))?,
    )
}

macro_rules! ckr_names {
    ($($name:ident),* $(,)?) => {
        /// Symbolic CKR names accepted as `fault.X` values.
        const CKR_NAMES: &[(&str, CK_RV)] = &[$((stringify!($name), cryptoki_sys::$name),)*];
    };
}

ckr_names! {
    CKR_OK,
    CKR_HOST_MEMORY,
    CKR_SLOT_ID_INVALID,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_CANT_LOCK,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_FUNCTION_CANCELED,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_MECHANISM_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_SESSION_HANDLE_INVALID,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_BUFFER_TOO_SMALL,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED};

    #[test]
    fn parses_all_keys() {
        let text = "\
# comment
fault.C_Sign = 0x30   # trailing comment
nth.C_Sign = 5
fault.C_SignInit = CKR_DEVICE_REMOVED
every.C_SignInit = 3
delay_ms.C_Login = 1_500
corrupt_every = 10
max_sessions = 4
token_flags_set = 0x40000
generation = 7
";
        let (rules, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rules.rule(Func::C_Sign).fault, Some(CKR_DEVICE_ERROR));
        assert_eq!(rules.rule(Func::C_Sign).nth, Some(5));
        assert_eq!(rules.rule(Func::C_SignInit).fault, Some(CKR_DEVICE_REMOVED));
        assert_eq!(rules.rule(Func::C_SignInit).every, Some(3));
        assert_eq!(rules.rule(Func::C_Login).delay_ms, Some(1500));
        assert_eq!(rules.corrupt_every, Some(10));
        assert_eq!(rules.max_sessions, Some(4));
        assert_eq!(rules.reported_max_sessions(), Some(4));
        assert_eq!(rules.token_flags_set, 0x40000);
        assert_eq!(rules.generation, 7);
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let text =
            "bogus = 1\nfault.C_Nope = 5\nfault.C_Sign = banana\nnth.C_Sign = 0\nno equals\n\
                    every.C_Login = 2\ngeneration = 3\n";
        let (rules, problems) = parse(text);
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert_eq!(rules.generation, 3);
        assert_eq!(rules.rule(Func::C_Sign).fault, None);
    }

    #[test]
    fn fault_counting() {
        let (rules, _) = parse(
            "fault.C_Sign = 5\nfault.C_Login = 6\nnth.C_Login = 2\n\
                                fault.C_Logout = 7\nevery.C_Logout = 3\n",
        );
        assert!((0..4).all(|_| rules.decide_fault(Func::C_Sign) == Some(5)));
        let login: Vec<_> = (0..4).map(|_| rules.decide_fault(Func::C_Login)).collect();
        assert_eq!(login, [None, Some(6), None, None]);
        let logout: Vec<_> = (0..7).map(|_| rules.decide_fault(Func::C_Logout)).collect();
        assert_eq!(logout, [None, None, Some(7), None, None, Some(7), None]);
        assert_eq!(rules.decide_fault(Func::C_GetInfo), None);
    }

    #[test]
    fn corrupt_counting() {
        let (rules, _) = parse("corrupt_every = 2\n");
        let hits: Vec<_> = (0..4).map(|_| rules.should_corrupt_signature()).collect();
        assert_eq!(hits, [false, true, false, true]);
        assert!(!Rules::default().should_corrupt_signature());
    }

    #[test]
    fn report_max_sessions_overrides() {
        let (rules, _) = parse("max_sessions = 4\nreport_max_sessions = unavailable\n");
        assert_eq!(
            rules.reported_max_sessions(),
            Some(CK_UNAVAILABLE_INFORMATION)
        );
        assert_eq!(rules.max_sessions, Some(4));
    }
}
