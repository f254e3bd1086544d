"""Language names as given to `--lang LANG=SOURCE`: a typo is caught where it is typed.

    warn_if_unknown("ed", "--lang ed=corpora/de.txt")
    # warning: --lang ed=corpora/de.txt: 'ed' is not a language code polyglot-distil knows; did you mean 'de'? ...

A language name only labels text (the counts' `lang` column, `trim --langs`, a phase's batches),
so a name of one's own (`en-news`, `code`) works: it gets one warning line, never an error. Known:
every ISO 639-1 code (and the five withdrawn ones corpora still use: iw, in, ji, mo, sh), their
ISO 639-2 codes, and ISO 639-3 codes common in multilingual corpora (FLORES-200, mC4, XNLI);
a region or script after `-` or `_` (`pt-BR`, `zh_Hans`, `eng_Latn`) is allowed.
"""

from __future__ import annotations

import re
import sys

ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el
en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu
ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na
nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so
sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
iw in ji mo sh
""".split())

ISO_639_3 = frozenset("""
aar abk ave afr aka amh arg ara asm ava aym aze bak bel bul bih bis bam ben bod bre bos cat che cha cos cre ces
chu chv cym dan deu div dzo ewe ell eng epo spa est eus fas ful fin fij fao fra fry gle gla glg grn guj glv hau
heb hin hmo hrv hat hun hye her ina ind ile ibo iii ipk ido isl ita iku jpn jav kat kon kik kua kaz kal khm kan
kor kau kas kur kom cor kir lat ltz lug lim lin lao lit lub lav mlg mah mri mkd mal mon mar msa mlt mya nau nob
nde nep ndo nld nno nor nbl nav nya oci oji orm ori oss pan pli pol pus por que roh run ron rus kin san srd snd
sme sag sin slk slv smo sna som sqi srp ssw sot sun swe swa tam tel tgk tha tir tuk tgl tsn ton tur tso tat twi
tah uig ukr urd uzb ven vie vol wln wol xho yid yor zha zho zul
alb arm baq bur chi cze dut fre geo ger gre ice mac mao may per rum slo tib wel
arb ary arz apc ajp acm acq aeb ars cmn yue wuu hak nan lzh swh swc pes prs zsm ekk lvs khk npi uzn azj azb plt
gaz ory pbt quy ydd als kmr ckb knc taq tzm fuv dik
ace acq ast awa ban bem bho bjn bug ceb cjk crh dyu fon fur hne ilo kab kac kam kbp kea kmb lij lmo ltg lua luo
lus mag mai min mni mos nso nus pag pap scn shn sat szl tpi tum umb vec war kas hsb dsb gsw nds frr hif zza haw
chr sco ksh bar vls pms pnb nap mzn glk new gom kok doi brx tcy bpy ckb fil tet sah tyv krc kbd ady che ing lez
grc ang enm non got cop syc und mul zxx
""".split())

# the languages people most often mean, in the order a suggestion prefers them
COMMON = ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ar", "hi", "sw", "tr", "pl", "ko", "vi",
          "th", "el", "bg", "ur", "id", "fa", "he", "uk", "cs", "sv", "da", "fi", "no", "ro", "hu", "bn", "ta")

_shown: set[str] = set()  # each name is warned about once per process (`run` reads the corpora in several stages)


def is_known(lang: str) -> bool:
    """`lang`'s part before the first `-` or `_` (its region or script) is an ISO 639 code we know."""
    base = re.split(r"[-_]", lang, maxsplit=1)[0].lower()
    return base in ISO_639_1 or base in ISO_639_3


def close_codes(lang: str) -> list[str]:
    """Known two-letter codes one edit from `lang` (swapped letters first: `ed` -> `de`), at most three."""
    base = lang.lower()
    swapped = [base[:i] + base[i + 1] + base[i] + base[i + 2:] for i in range(len(base) - 1)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    one_edit = [base[:i] + c + base[i + 1:] for i in range(len(base)) for c in letters]  # one letter changed
    one_edit += [base[:i] + base[i + 1:] for i in range(len(base))]  # one letter too many
    one_edit += [base[:i] + c + base[i:] for i in range(len(base) + 1) for c in letters]  # one letter missing
    found = [c for c in swapped if c in ISO_639_1 and c != base]
    found += [c for c in COMMON if c in one_edit and c not in found]
    return found[:3]



def warn_if_unknown(lang: str, where: str) -> bool:
    """Print one warning line on stderr when `lang` is not a code we know (once per name), with
    the close codes a typo may have meant. Returns whether it warned."""
    if is_known(lang) or lang in _shown:
        return False
    _shown.add(lang)
    close = close_codes(lang)
    named = [repr(c) for c in close]
    hint = ""
    if named:
        hint = f"did you mean {named[0] if len(named) == 1 else ', '.join(named[:-1]) + ' or ' + named[-1]}? "
    print(f"warning: {where}: {lang!r} is not a language code polyglot-distil knows (ISO 639); {hint}"
          f"a name of your own works, and trim --langs must then use it too", file=sys.stderr, flush=True)
    return True
