#!/usr/bin/env python3
"""Writes the bilingual Debian Reference RAG cases for scripts/bench/retrieval-ja.sh.

The same 12 questions, asked in English against the English chapters and in Japanese against
the Japanese ones (chapter 4 "Authentication and access controls" and chapter 8 "I18N and
L10N"), each with a gold passage: a short verbatim substring of that language's text. Every
gold passage is checked to occur in its document (after html_to_text.py), so a new edition of
the package that rewords a passage fails here instead of scoring recall 0.

usage: retrieval_ja_cases.py DOCS_DIR OUT.jsonl
  DOCS_DIR holds ch04.en.txt ch04.ja.txt ch08.en.txt ch08.ja.txt
"""
import json
import os
import sys

# (id, chapter, en question, en answer, en gold, ja question, ja answer, ja gold)
CASES = [
    ("shadow", "ch04",
     "Which file holds the secure user account information?",
     "/etc/shadow, readable by root and the shadow group.",
     "secure user account information",
     "保護されたユーザーアカウント情報を保持するファイルはどれですか？",
     "/etc/shadow です。",
     "保護されたユーザーアカウント情報"),
    ("passwd-x", "ch04",
     "What does an x in the second entry of /etc/passwd mean?",
     "The encrypted password is in /etc/shadow.",
     "the encrypted password is in \"/etc/shadow\"",
     "/etc/passwd の2番目のエントリーが x のとき、それは何を意味しますか？",
     "暗号化したパスワードは /etc/shadow にあります。",
     "暗号化したパスワードは \"/etc/shadow\" ファイルの中にあります"),
    ("password-length", "ch04",
     "How many characters should a good password have?",
     "At least 6 to 8 characters.",
     "at least 6 to 8 characters",
     "良好なパスワードは何文字以上にするべきですか？",
     "少なくとも6から8文字です。",
     "少なくとも6から8文字"),
    ("chage", "ch04",
     "What does the chage command do?",
     "It manages password aging information.",
     "manage password aging information",
     "chage コマンドは何をしますか？",
     "パスワードのエージング情報を管理します。",
     "パスワードのエージング情報管理"),
    ("mkpasswd", "ch04",
     "What is mkpasswd from the whois package?",
     "An over-featured front end to the crypt(3) library.",
     "over-featured front end to the crypt(3) library",
     "whois パッケージの mkpasswd とは何ですか？",
     "crypt(3) ライブラリーの充実しすぎたフロントエンドです。",
     "crypt(3) ライブラリーの充実しすぎたフロントエンド"),
    ("nss", "ch04",
     "What does NSS provide to programs such as ls and id?",
     "A name service mechanism to obtain user and group names.",
     "obtain the user and group name for programs such as ls(1) and id(1)",
     "NSS は ls や id のようなプログラムに何を提供しますか？",
     "ユーザーやグループの名前を得るためのネームサービスメカニズムです。",
     "ユーザーやグループの名前を得ために"),
    ("su-wheel", "ch04",
     "How can the use of su be restricted to the root group?",
     "By enabling the pam_wheel.so line in /etc/pam.d/su.",
     "by enabling the line with \"pam_wheel.so\" in \"/etc/pam.d/su\"",
     "su を使える人を root グループに制限するにはどうしますか？",
     "/etc/pam.d/su の pam_wheel.so の行をエネーブルします。",
     "\"pam_wheel.so\" の行をエネーブルする"),
    ("fail2ban", "ch04",
     "What does fail2ban do?",
     "It bans IPs that cause multiple authentication errors.",
     "ban IPs that cause multiple authentication errors",
     "fail2ban は何をしますか？",
     "複数回の認証エラーを発生させる IP を使用禁止にします。",
     "複数回の認証エラーを発生させる IP を使用禁止にします"),
    ("root-reset", "ch04",
     "With physical access to the disk, how is the root password reset?",
     "Edit /etc/passwd and make the second entry for the root account empty.",
     "make the second entry for the root account empty",
     "ディスクに物理的にアクセスできる場合、root パスワードはどうやってリセットされますか？",
     "/etc/passwd を編集し root アカウントの2番目の項目を空にします。",
     "root アカウントの2番目の項目を空にします"),
    ("sudo-password", "ch04",
     "Whose password does sudo require?",
     "Only an ordinary user's password.",
     "sudo requires only an ordinary user's password",
     "sudo は誰のパスワードを必要としますか？",
     "ユーザーの通常パスワードだけです。",
     "sudo はユーザーの通常パスワードだけが必要です"),
    ("policykit", "ch04",
     "To which accounts does PolicyKit limit administrative operations on Debian?",
     "To user accounts belonging to the sudo group.",
     "user accounts belonging to the sudo group",
     "Debian で PolicyKit は管理操作をどのアカウントに限定しますか？",
     "sudo グループ所属のユーザーアカウントです。",
     "sudoグループ所属のユーザーアカウントに限定します"),
    ("vfat-cp437", "ch08",
     "Which encoding does mount assume for a vfat filesystem without options?",
     "CP437.",
     "assumes CP437 if used without option",
     "オプション無しの場合、mount は vfat ファイルシステムにどの符号化方式を仮定しますか？",
     "CP437 です。",
     "オプション無しの場合 CP437 とみなします"),
]


def main():
    docs, out = sys.argv[1], sys.argv[2]
    text = {}
    for ch in ("ch04", "ch08"):
        for lang in ("en", "ja"):
            with open(os.path.join(docs, f"{ch}.{lang}.txt"), encoding="utf-8") as f:
                text[ch, lang] = f.read()
    lines = []
    missing = []
    for cid, ch, qe, ae, ge, qj, aj, gj in CASES:
        for lang, q, a, g in (("en", qe, ae, ge), ("ja", qj, aj, gj)):
            if g.lower() not in text[ch, lang].lower():
                missing.append(f"{lang}-{cid}: {g!r} not in {ch}.{lang}.txt")
            lines.append({
                "id": f"{lang}-{cid}",
                "task": "rag",
                "language": lang,
                "query": q,
                "reference_answer": a,
                # Both chapters of the language: retrieval must pick the right one.
                "documents": [f"ch04.{lang}.txt", f"ch08.{lang}.txt"],
                "gold_passages": [g],
                "tags": ["debian-reference", ch],
            })
    if missing:
        sys.exit("gold passages not found:\n" + "\n".join(missing))
    with open(out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{out}: {len(lines)} cases")


if __name__ == "__main__":
    main()
