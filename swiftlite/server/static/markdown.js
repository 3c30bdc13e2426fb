// A small, safe Markdown renderer for model answers: fenced code, headings, lists, quotes, paragraphs, and inline
// code, bold, italic and links. It builds DOM nodes and sets only textContent and a few vetted attributes, so
// nothing the model writes can become HTML (a "<script>" in an answer is shown as text). It must cope with a
// half-written answer too: it re-renders the whole text as it streams, and an unclosed fence is still code.
"use strict";

window.SwiftliteMarkdown = (function () {
  const FENCE = /^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*(\d+)[.)]\s+(.*)$/;
  const QUOTE = /^\s*>\s?(.*)$/;
  // Inline spans, in order of precedence: code, bold, italic, [text](link).
  const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]+?)\*\*|__(?=\S)([\s\S]+?)__|\*(?=[^\s*])([^*]+?)\*|\[([^\]\n]+)\]\(([^()\s]+)\)/g;
  const SAFE_LINK = /^(https?:|mailto:)/i;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Appends the inline spans of `text` to `parent`; single newlines become <br> (chat answers mean them).
  function inline(parent, text) {
    let last = 0;
    // matchAll iterates over a copy of the regex: the recursive calls below cannot disturb its position.
    for (const match of text.matchAll(INLINE)) {
      plain(parent, text.slice(last, match.index));
      if (match[1]) {
        parent.appendChild(el("code", null, match[2].replace(/^ (.*) $/, "$1")));
      } else if (match[3] || match[4]) {
        const strong = el("strong");
        inline(strong, match[3] || match[4]);
        parent.appendChild(strong);
      } else if (match[5]) {
        const em = el("em");
        inline(em, match[5]);
        parent.appendChild(em);
      } else if (SAFE_LINK.test(match[7])) {
        const link = el("a");
        link.href = match[7];  // an attribute, not markup: vetted above to be http(s) or mailto
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        inline(link, match[6]);
        parent.appendChild(link);
      } else {
        plain(parent, match[0]);  // javascript: and other schemes stay text
      }
      last = match.index + match[0].length;
    }
    plain(parent, text.slice(last));
  }

  function plain(parent, text) {
    text.split("\n").forEach((line, index) => {
      if (index > 0) parent.appendChild(el("br"));
      if (line) parent.appendChild(document.createTextNode(line));
    });
  }

  function render(text) {
    const root = document.createDocumentFragment();
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    let paragraph = [];
    let list = null;  // the <ul>/<ol> being filled
    const flushParagraph = () => {
      if (paragraph.length) {
        const p = el("p");
        inline(p, paragraph.join("\n"));
        root.appendChild(p);
      }
      paragraph = [];
    };
    const flush = () => { flushParagraph(); list = null; };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let match;
      if ((match = FENCE.exec(line))) {
        flush();
        const fence = match[1];
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence); i++) body.push(lines[i]);
        const pre = el("pre");
        const code = el("code", null, body.join("\n"));
        if (match[2]) code.dataset.language = match[2];
        pre.appendChild(code);
        root.appendChild(pre);
      } else if ((match = HEADING.exec(line))) {
        flush();
        const heading = el("h" + Math.min(6, match[1].length + 2));  // the page's own h1 stays the only h1
        inline(heading, match[2]);
        root.appendChild(heading);
      } else if ((match = BULLET.exec(line)) || (match = NUMBERED.exec(line))) {
        flushParagraph();
        const ordered = match.length === 3;
        if (!list || (list.tagName === "OL") !== ordered) {
          list = el(ordered ? "ol" : "ul");
          if (ordered && match[1] !== "1") list.start = Number(match[1]);
          root.appendChild(list);
        }
        const item = el("li");
        inline(item, ordered ? match[2] : match[1]);
        list.appendChild(item);
      } else if ((match = QUOTE.exec(line))) {
        flush();
        const quote = el("blockquote");
        inline(quote, match[1]);
        root.appendChild(quote);
      } else if (!line.trim()) {
        flush();
      } else {
        list = null;
        paragraph.push(line);
      }
    }
    flushParagraph();
    return root;
  }

  return { render };
})();
