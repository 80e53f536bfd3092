"""mammo: breast-cancer classification on screening mammograms.

Importing the package is cheap and torch-free; submodules that need torch import it themselves.
"""

__version__ = "0.1.0"
