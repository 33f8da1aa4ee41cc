from celery_vitals.cli import main

main()
