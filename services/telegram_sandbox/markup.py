"""Check text the way the Bot API parses `parse_mode=HTML`, so unescaped text is caught (pure)."""

from __future__ import annotations

import html
from html.parser import HTMLParser

ALLOWED_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
ALLOWED_ENTITIES = frozenset({"lt", "gt", "amp", "quot"})
MAX_TEXT_UTF16 = 4096


def utf16_len(text: str) -> int:
    """Return the length Telegram counts: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


class _TelegramHTML(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.plain: list[str] = []
        self.open: list[str] = []
        self.error: str | None = None

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self._fail(f'Unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._fail(f'Unsupported start tag "{tag}"')

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self._fail(f'Unexpected end tag "{tag}"')
            return
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if "<" in data:
            self._fail('Unexpected "<": escape it as &lt;')
        self.plain.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in ALLOWED_ENTITIES:
            self._fail(f'Unsupported HTML entity "&{name};"')
        self.plain.append(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.plain.append(html.unescape(f"&#{name};"))

    def handle_comment(self, data: str) -> None:
        self._fail("Unsupported HTML comment")

    def handle_decl(self, decl: str) -> None:
        self._fail("Unsupported HTML declaration")


def parse_html(text: str) -> tuple[str, str | None]:
    """Return (plain text, None) for valid Telegram HTML, or (partial text, the parse error)."""
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.error is None and parser.open:
        parser.error = f'Can\'t find end tag corresponding to start tag "{parser.open[-1]}"'
    return "".join(parser.plain), parser.error
