#!/usr/bin/env python3
"""Debian Reference chapter HTML -> plain text for retrieval benchmarks.

Block elements (paragraphs, headings, list items, table rows, <pre>) become lines; inline
whitespace collapses to one space (Japanese text keeps no spaces between characters); table
cells are joined by " | ". Navigation headers and footers are dropped.

usage: html_to_text.py IN.html OUT.txt
"""
import html.parser
import re
import sys

BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "li", "tr", "pre", "dt", "dd", "table",
         "title", "blockquote", "br"}
SKIP = {"script", "style", "head"}


class Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines = []
        self.cur = []
        self.skip = 0
        self.nav = 0
        self.pre = 0
        self.cells = []

    def flush(self):
        t = "".join(self.cur)
        if not self.pre:
            t = re.sub(r"\s+", " ", t).strip()
        if t.strip():
            self.lines.append(t.rstrip())
        self.cur = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag in SKIP:
            self.skip += 1
        elif tag == "div" and cls in ("navheader", "navfooter"):
            self.nav += 1
        elif self.nav and tag == "div":
            self.nav += 1
        if tag in ("td", "th") and self.cur:
            self.cur.append(" | ")
        if tag in BLOCK:
            self.flush()
        if tag == "pre":
            self.pre += 1

    def handle_endtag(self, tag):
        if tag in SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "div" and self.nav:
            self.nav -= 1
        if tag in BLOCK:
            self.flush()
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if self.skip or self.nav:
            return
        self.cur.append(data)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    p = Text()
    with open(src, encoding="utf-8") as f:
        p.feed(f.read())
    p.flush()
    text = "\n".join(p.lines) + "\n"
    with open(dst, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
