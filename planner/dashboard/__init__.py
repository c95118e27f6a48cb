"""Data shaping and figures for the Streamlit dashboard (app.py).

uploads:   uploaded files (bytes) -> specs, each error an InputError naming the field
scenario:  the sidebar's choices as one validated, frozen Scenario
data:      simulation points, sweeps, timeline rows, heatmap, store comparison, downloads
figures:   plotly figures from those rows (plotly is imported only here)

Nothing here imports streamlit: app.py is the only Streamlit code, and it wraps the
simulation functions of `data` in st.cache_data.
"""
