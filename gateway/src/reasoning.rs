//! Reasoning parsers: split streamed model text into `reasoning_content` and
//! `content`.
//!
//! Qwen3 (`--reasoning-parser qwen3`): output that starts with `<think>` (after
//! optional whitespace) is reasoning up to `</think>`; the rest, with its leading
//! newlines dropped, is content. Output that does not start with `<think>` is all
//! content. A response cut off inside the think block (`finish_reason` "length") is
//! all reasoning.
//!
//! Invariants: pushing text in any split gives the same result as pushing it at
//! once (a tag cut across deltas is withheld until it is decided, and
//! [`ReasoningSplitter::finish`] releases whatever is withheld); no text is lost or
//! duplicated apart from the two tags and the newlines after `</think>`.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not yet known whether the output opens with `<think>`.
    Start,
    Thinking,
    /// After `</think>`: `true` while leading newlines are still being dropped.
    Answer {
        trimming: bool,
    },
}

#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    state: State,
    /// Text not yet emitted: a possible tag prefix.
    pending: String,
}

impl Default for ReasoningSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl ReasoningSplitter {
    pub fn new() -> Self {
        ReasoningSplitter {
            state: State::Start,
            pending: String::new(),
        }
    }

    /// Splits one more piece of text.
    pub fn push(&mut self, text: &str) -> Split {
        let mut out = Split::default();
        self.pending.push_str(text);
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.pending.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.pending = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(trimmed) {
                        return out; // undecided: "", "  <thi", ...
                    } else {
                        self.state = State::Answer { trimming: false };
                    }
                }
                State::Thinking => {
                    if let Some(at) = self.pending.find(CLOSE) {
                        out.reasoning.push_str(&self.pending[..at]);
                        self.pending = self.pending[at + CLOSE.len()..].to_string();
                        self.state = State::Answer { trimming: true };
                    } else {
                        let keep = partial_suffix(&self.pending, CLOSE);
                        let emit = self.pending.len() - keep;
                        out.reasoning.push_str(&self.pending[..emit]);
                        self.pending.drain(..emit);
                        return out;
                    }
                }
                State::Answer { trimming } => {
                    let text = std::mem::take(&mut self.pending);
                    let text = if trimming {
                        let t = text.trim_start_matches(['\n', '\r']);
                        if !t.is_empty() {
                            self.state = State::Answer { trimming: false };
                        }
                        t
                    } else {
                        &text
                    };
                    out.content.push_str(text);
                    return out;
                }
            }
        }
    }

    /// Releases withheld text at the end of the output.
    pub fn finish(&mut self) -> Split {
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Start | State::Answer { .. } => Split {
                reasoning: String::new(),
                content: rest,
            },
            State::Thinking => Split {
                reasoning: rest,
                content: String::new(),
            },
        }
    }
}

/// Length of the longest proper suffix of `text` that is a prefix of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k) && tag.starts_with(&text[text.len() - k..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> Split {
        let mut s = ReasoningSplitter::new();
        let mut all = Split::default();
        for p in pieces {
            let x = s.push(p);
            all.reasoning += &x.reasoning;
            all.content += &x.content;
        }
        let x = s.finish();
        all.reasoning += &x.reasoning;
        all.content += &x.content;
        all
    }

    fn split(r: &str, c: &str) -> Split {
        Split {
            reasoning: r.into(),
            content: c.into(),
        }
    }

    #[test]
    fn think_block_becomes_reasoning() {
        let text = "<think>\nOkay, the user wants.\n</think>\n\nFederer is great.";
        let want = split("\nOkay, the user wants.\n", "Federer is great.");
        assert_eq!(run(&[text]), want);
        // Every split into two and three pieces gives the same answer.
        let idx: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &idx {
            assert_eq!(run(&[&text[..i], &text[i..]]), want, "split at {i}");
            for &j in idx.iter().filter(|&&j| j >= i) {
                assert_eq!(run(&[&text[..i], &text[i..j], &text[j..]]), want, "{i},{j}");
            }
        }
    }

    #[test]
    fn no_think_block_is_all_content() {
        assert_eq!(
            run(&["Hello ", "<think>x</think>"]),
            split("", "Hello <think>x</think>")
        );
        assert_eq!(run(&["<thi"]), split("", "<thi"));
        assert_eq!(run(&[""]), split("", ""));
    }

    #[test]
    fn cut_off_thinking_is_all_reasoning_and_partial_close_is_released() {
        assert_eq!(run(&["<think>abc</thi"]), split("abc</thi", ""));
        assert_eq!(
            run(&["  <think>é", "ü</", "think>\n", "\n", "x\n"]),
            split("éü", "x\n")
        );
    }

    #[test]
    fn withheld_text_is_only_a_tag_prefix() {
        let mut s = ReasoningSplitter::new();
        assert_eq!(s.push("<think>ab</"), split("ab", ""));
        assert_eq!(s.push("x"), split("</x", ""));
    }
}
