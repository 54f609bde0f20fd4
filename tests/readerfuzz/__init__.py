"""A mutation fuzz of lcow's layer images through every reader (harness only, not shipped).

:mod:`~tests.readerfuzz.seeds` builds small, varied, valid layer images with lcow's own
converter and maps where their structures lie; :mod:`~tests.readerfuzz.mutate` derives mutants
from them (bit flips, byte sets, block swaps, truncation, targeted field values);
:mod:`~tests.readerfuzz.readers` runs every reader of a layer image on one mutant;
:mod:`~tests.readerfuzz.campaign` runs many mutants, each in a forked child with a time and
memory budget, and classifies what happened. ``tools/reader_fuzz.py`` is the command line.
"""
