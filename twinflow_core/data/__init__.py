"""Data sources (the shapes world, sklearn digits, image folders) and the one prepared-dataset format.

Every source yields `Sample`s (image, caption, scene, label, kind); `prepared.write_prepared` turns them into
shards + a manifest under data/prepared/<name>/ and `prepared.load_prepared` reads them back.
"""
