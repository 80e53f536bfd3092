"""mammo: breast-cancer classification on screening mammograms.

Importing the package is cheap and torch-free; submodules that need torch import it themselves.

Every process that imports it (the ``mammo`` commands, each pipeline step) freezes its heap at
exit: the interpreter's last full garbage collection over the objects torch, scipy and
scikit-learn leave behind took 1-2 s of every step's exit here (a quarter of a tiny step) and
frees nothing the operating system does not take back anyway. ``atexit`` handlers, and with them
flushing and closing files, still run before it.
"""

import atexit
import gc

__version__ = "0.1.0"

atexit.register(gc.freeze)
