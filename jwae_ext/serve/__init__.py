"""A local web app over an index: ``python -m jwae_ext.serve INDEX`` (:mod:`.app` for the JSON
API and the page in ``static/``, :mod:`.uploads` for checking query images, :mod:`.thumbnails`).
Needs the ``serve`` extra: ``pip install -e ".[serve]"``."""
