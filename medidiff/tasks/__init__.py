"""Tasks: each is one public function plus a generator twin that yields ``Progress``.

Import the task modules directly (``from medidiff.tasks.train import train``); this
package does not import them eagerly so that importing one does not pull in the rest.
"""
