"""Stage 4, analysis: fTRI (`ftri`: maps and ranking; `ftri_files`: its inputs and output files),
statistics (`stats`), the figures each task and condition gets (`metrics`) and the summary rows
written to summary.json (`summary`). Imports no backend and no judge."""
