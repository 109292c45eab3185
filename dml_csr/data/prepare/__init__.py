"""Turn the hand-downloaded Helen, LaPa and CelebAMask-HQ archives, or a data set of your own,
into the project's data layout.

What lives here: one module per data set (:mod:`.helen` with HELEN*, :mod:`.lapa`,
:mod:`.celebamask_hq`) and :mod:`.custom` (any label set: images, id labels, class names), each
reading its raw files into a plan of samples; :mod:`.common`, the
input side they share (errors, report, raw-file readers); :mod:`.publish`, the output side
(atomic files, the runner that writes a plan into the prepared root). ``tools/prepare_data.py``
is the command line.

Target layout (what the loader and the scorer read, :mod:`dml_csr.data.layout`)::

    OUT/dataset.json                         # the identity: the data set's description, what
                                             # produced it
    OUT/label_names.txt                      # schema tokens, one per line, first ``bg``
    OUT/<split>_list.txt                     # lines ``images/NAME.jpg labels/NAME.png``
    OUT/<split>/images/NAME.jpg
    OUT/<split>/labels/NAME.png              # uint8 class ids

Guarantees shared by the three preparers:

* The raw tree is only read: every output is written under OUT, and OUT may not be, or lie inside,
  the raw directory. Outputs are written to a hidden ``.NAME.<pid>.partial`` file and renamed into
  place, so a file under its final name is always complete; the list files are removed when a run
  starts and written (with ``label_names.txt`` and ``dataset.json``) last, so a tree that has
  them is complete. An OUT that holds another data set (its tokens or its ``dataset.json``) is
  refused.
* Re-running skips every sample whose outputs exist and are valid (decodable, label ids in range,
  image and label of the same size, verbatim copies still matching their source).
* A missing, unreadable or malformed input stops the run with a :class:`PrepareError` whose message
  starts with the offending path.
"""
from .celebamask_hq import prepare_celebamask_hq
from .common import EXPECTED_COUNTS, LINK_MODES, PrepareError, PrepareReport
from .custom import prepare_custom
from .helen import HELEN_SOURCES, prepare_helen
from .lapa import prepare_lapa

__all__ = ["PrepareError", "PrepareReport", "EXPECTED_COUNTS", "LINK_MODES", "HELEN_SOURCES",
           "prepare_celebamask_hq", "prepare_helen", "prepare_lapa", "prepare_custom"]
