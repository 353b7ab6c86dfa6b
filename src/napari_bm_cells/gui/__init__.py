"""The napari plugin: everything that needs napari or Qt, behind one door.

``napari.yaml`` (the npe2 manifest) names the readers (:mod:`.reader`), the sample data
(:mod:`.sample_data`) and the dock widgets: Analyze smear (:mod:`.widget`), Differential
count (:mod:`.panel`, with :mod:`.chart` drawing its figures off the GUI thread) and Cell
gallery (:mod:`.gallery`). :mod:`.layers` turns the pipeline's tables into napari layers.
The core package (``napari_bm_cells``) never imports this one.
"""
