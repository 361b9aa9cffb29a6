"""The Embeddings map: a run's catalogue embedded (``embeds``) and projected (``projection``) in background jobs,
drawn with WebGL (``figure``, ``colours``), filtered (``view``), photos on hover (``sprites``, ``sprite_job``,
``hover``), its panels (``panels``), its download (``export_view``) and its bench at 100k points (``bench_map``).
"""
