//! Stop strings over streamed text: text that might be the start of a stop string is
//! held back until it is known not to be; a matched stop string and everything after
//! it is never emitted.
//!
//! OWNER: helper D.
//!
//! Invariants: the text emitted so far (the concatenation of every `emit`, plus
//! `flush()` when no stop matched) is exactly the streamed text up to the earliest
//! occurrence of any stop string in the text received up to the first delta that
//! completes one (generation ends there: a longer stop string that started earlier
//! but would only have completed with later text never gets that text), or the
//! whole text when none occurs. The held-back
//! text is the longest suffix of the unsent text that is a proper prefix of some stop
//! string, so it is shorter than the longest stop string and every push scans only
//! that suffix plus the new delta. Splits happen on `char` boundaries only. Empty stop
//! strings are ignored (validation rejects them). After a match the checker is done:
//! later pushes emit nothing and report `stopped`.

/// Result of pushing one text delta.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text that is safe to send to the client now.
    pub emit: String,
    /// A stop string matched: generation ends; `emit` excludes the stop string.
    pub stopped: bool,
}

pub struct StopChecker {
    /// Non-empty, deduplicated stop strings.
    stops: Vec<String>,
    /// Text received but not yet emitted: no stop string occurs in it, and it is a
    /// proper prefix of some stop string.
    pending: String,
    stopped: bool,
}

impl StopChecker {
    pub fn new(stop: &[String]) -> Self {
        let mut stops: Vec<String> = stop.iter().filter(|s| !s.is_empty()).cloned().collect();
        stops.sort();
        stops.dedup();
        StopChecker {
            stops,
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.stopped {
            return StopStep {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopStep {
                emit: delta.to_owned(),
                stopped: false,
            };
        }
        self.pending.push_str(delta);
        // A match cannot start in text already emitted: such a start would have made a
        // longer held suffix. So searching `pending` finds the earliest match.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let mut emit = std::mem::take(&mut self.pending);
            emit.truncate(at);
            self.stopped = true;
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let hold_from = self.hold_start();
        let held = self.pending.split_off(hold_from);
        StopStep {
            emit: std::mem::replace(&mut self.pending, held),
            stopped: false,
        }
    }

    /// Whether a stop string has matched.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Start of the longest suffix of `pending` that is a prefix of some stop string
    /// (`pending.len()` when none is).
    fn hold_start(&self) -> usize {
        let text = self.pending.as_bytes();
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let lowest = text.len().saturating_sub(longest.saturating_sub(1));
        (lowest..text.len())
            .filter(|&i| self.pending.is_char_boundary(i))
            .find(|&i| {
                let tail = &text[i..];
                self.stops.iter().any(|s| s.as_bytes().starts_with(tail))
            })
            .unwrap_or(text.len())
    }

    /// End of generation without a stop match: the held-back text.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stops(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Pushes the deltas; returns (all emitted text incl. flush when not stopped, stopped).
    fn run(stop: &[String], deltas: &[&str]) -> (String, bool) {
        let mut c = StopChecker::new(stop);
        let mut out = String::new();
        for d in deltas {
            let step = c.push(d);
            out.push_str(&step.emit);
            if step.stopped {
                assert_eq!(c.flush(), "");
                return (out, true);
            }
        }
        out.push_str(&c.flush());
        (out, false)
    }

    /// The reference: after each delta, the earliest occurrence of any stop
    /// string in all the text so far; the first delta with one ends the stream.
    fn expected(stop: &[String], deltas: &[&str]) -> (String, bool) {
        let mut text = String::new();
        for d in deltas {
            text.push_str(d);
            let first = stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min();
            if let Some(at) = first {
                return (text[..at].to_string(), true);
            }
        }
        (text, false)
    }

    #[test]
    fn holds_back_possible_prefix_then_releases_it() {
        let mut c = StopChecker::new(&stops(&["STOP"]));
        assert_eq!(c.push("hello S").emit, "hello ");
        assert_eq!(c.push("T").emit, "");
        assert_eq!(c.push("x").emit, "STx");
        let s = c.push("ST");
        assert_eq!((s.emit.as_str(), s.stopped), ("", false));
        let s = c.push("OP and more");
        assert_eq!((s.emit.as_str(), s.stopped), ("", true));
        assert!(c.is_stopped());
        assert_eq!(c.push("later").emit, "");
        assert_eq!(c.flush(), "");
    }

    #[test]
    fn stop_string_spanning_many_deltas() {
        let s = stops(&["<|end|>"]);
        assert_eq!(
            run(&s, &["ab", "<", "|", "e", "n", "d", "|", ">tail"]),
            ("ab".into(), true)
        );
    }

    #[test]
    fn several_candidate_starts_in_one_delta() {
        let s = stops(&["abc"]);
        assert_eq!(run(&s, &["ab", "ab", "c"]), ("ab".into(), true));
        assert_eq!(run(&s, &["aaab", "abab"]), ("aaababab".into(), false));
        let mut c = StopChecker::new(&s);
        // "ab" must be held (could be "abc"), not the earlier "a"
        assert_eq!(c.push("xaab").emit, "xa");
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let s = stops(&["abcd", "bc"]);
        assert_eq!(run(&s, &["abce"]), ("a".into(), true));
        assert_eq!(run(&s, &["xab", "cd"]), ("x".into(), true));
        assert_eq!(run(&s, &["xab", "ce"]), ("xa".into(), true));
    }

    /// A stop string that completes in this delta ends the stream even when a
    /// longer one started earlier and would complete with the next delta
    /// (proptest found this case against an oracle that looked at the whole text).
    #[test]
    fn stop_completed_now_beats_longer_one_completing_later() {
        let s = stops(&[">", "<>é"]);
        assert_eq!(run(&s, &["<é<>", "é"]), ("<é<".into(), true));
        assert_eq!(run(&s, &["<é<>é"]), ("<é".into(), true));
    }

    #[test]
    fn no_stop_strings_passes_through_and_empty_strings_are_ignored() {
        let mut c = StopChecker::new(&stops(&["", ""]));
        assert_eq!(c.push("abc").emit, "abc");
        assert_eq!(c.flush(), "");
    }

    #[test]
    fn multibyte_text_is_split_on_char_boundaries() {
        let s = stops(&["éé!"]);
        let mut c = StopChecker::new(&s);
        assert_eq!(c.push("aé").emit, "a");
        assert_eq!(c.push("é").emit, "");
        assert_eq!(c.push("x").emit, "ééx");
        assert_eq!(run(&s, &["ééé", "!"]), ("é".into(), true));
    }

    proptest! {
        #[test]
        fn emitted_text_is_text_before_first_stop(
            text in "[abé<>]{0,40}",
            stop in proptest::collection::vec("[abé<>]{1,5}", 0..4),
            cuts in proptest::collection::vec(0usize..48, 0..12),
        ) {
            // split `text` at the given char positions
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            let mut bounds: Vec<usize> = cuts
                .iter()
                .map(|&c| chars.get(c).map_or(text.len(), |&(b, _)| b))
                .collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            bounds.dedup();
            let deltas: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(run(&stop, &deltas), expected(&stop, &deltas));
        }

        #[test]
        fn held_text_never_exceeds_longest_stop(
            text in "[ab]{0,60}",
            stop in proptest::collection::vec("[ab]{1,6}", 1..3),
        ) {
            let longest = stop.iter().map(String::len).max().unwrap_or(0);
            let mut c = StopChecker::new(&stop);
            let mut sent = 0;
            for ch in text.chars() {
                let step = c.push(&ch.to_string());
                sent += 1;
                if step.stopped { break; }
                prop_assert!(c.pending.len() < longest.max(1));
                prop_assert!(sent >= c.pending.len());
            }
        }
    }
}
