//! WeChat's rules for free text we send it (order description, attach, refund reason): limits
//! counted in **UTF-8 bytes**, not characters, and only characters of 1 to 3 bytes (protocol
//! §0, §5.1). A real JSAPI order with a 69-character Chinese description (135 bytes) was
//! refused with `PARAM_ERROR`, `detail.value = 135`: counting characters let any product name
//! over ~42 CJK characters become an order that can never be paid.

/// `description` of a JSAPI order: 127 bytes.
pub const DESCRIPTION_MAX_BYTES: usize = 127;
/// `attach` of a JSAPI order: 128 bytes.
pub const ATTACH_MAX_BYTES: usize = 128;
/// `reason` of a refund application: 80 bytes.
pub const REFUND_REASON_MAX_BYTES: usize = 80;

/// Whether WeChat accepts the character at all: 4-byte UTF-8 (emoji, rare CJK extensions)
/// is refused whatever the length.
pub fn is_accepted_char(c: char) -> bool {
    c.len_utf8() <= 3
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a character
/// boundary (a CJK character is never split into an invalid sequence).
pub fn cut_to_bytes(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` as WeChat takes it: characters it refuses dropped (not replaced: a placeholder
/// would show in the payer's bill), then cut to `max_bytes`.
pub fn fit(text: &str, max_bytes: usize) -> String {
    let accepted: String = text.chars().filter(|c| is_accepted_char(*c)).collect();
    cut_to_bytes(&accepted, max_bytes).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_is_cut_by_bytes_on_a_character_boundary() {
        let name = "中".repeat(50); // 150 bytes
        let cut = fit(&name, DESCRIPTION_MAX_BYTES);
        assert_eq!(cut.len(), 126, "42 characters of 3 bytes; a 43rd would need 129");
        assert_eq!(cut.chars().count(), 42);
        assert!(name.starts_with(&cut));
    }

    #[test]
    fn a_69_character_description_no_longer_reaches_135_bytes() {
        let description = format!("{}{}", "咖".repeat(66), "abc"); // 201 bytes, 69 characters
        assert!(fit(&description, DESCRIPTION_MAX_BYTES).len() <= DESCRIPTION_MAX_BYTES);
    }

    #[test]
    fn ascii_and_mixed_text_fill_the_limit_exactly() {
        assert_eq!(fit(&"x".repeat(300), DESCRIPTION_MAX_BYTES).len(), 127);
        assert_eq!(fit(&"x".repeat(300), ATTACH_MAX_BYTES).len(), 128);
        // 79 ASCII bytes then a 3-byte character that would end at 82: left out.
        let reason = format!("{}退款", "r".repeat(79));
        assert_eq!(fit(&reason, REFUND_REASON_MAX_BYTES), "r".repeat(79));
        // Two-byte characters (é) are cut between characters too.
        assert_eq!(cut_to_bytes("ééé", 5), "éé");
    }

    #[test]
    fn short_text_is_unchanged_and_emoji_are_dropped() {
        assert_eq!(fit("咖啡豆 250g ☕", DESCRIPTION_MAX_BYTES), "咖啡豆 250g ☕", "☕ is 3 bytes: accepted");
        assert_eq!(fit("mug 🍵 set", DESCRIPTION_MAX_BYTES), "mug  set");
        assert_eq!(cut_to_bytes("", 10), "");
    }
}
