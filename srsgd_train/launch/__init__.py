"""Recipe + cluster shape -> a command line or an sbatch script. Pure functions."""
