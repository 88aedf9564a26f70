"""ard-plugin: an example plugin package for ciard-bench.

It adds, beside the built-ins and without touching the benchmark's code:

* the method ``akd`` (table label "AKD"), :mod:`ard_plugin.akd`;
* the student ``cnn4``, a 4-layer CNN with BatchNorm, :mod:`ard_plugin.models`;
* the datasets ``digits_inverted`` (offline, real data) and ``image_folder`` (your own
  ``<root>/image_folder/{train,test}/<class>/*.png``), :mod:`ard_plugin.datasets`.

ciard-bench imports each module through the entry point of its group (``pyproject.toml``) on
the first lookup of a name; this file imports none of them, so each registration is recorded
under the entry point that made it. Everything used from the benchmark comes from
``ciard_bench.api``, the public extension API.
"""

__version__ = "0.1.0"
