-- Makes part 3 of any load in parts wait (its CREATE TABLE sleeps while public.stall has a
-- row), and logs each part table created in public.part_log, committed only with it.
-- Run as superuser in the user's database by the tests of loads in parts (SDK and CLI).
CREATE TABLE public.stall (on_ boolean);
INSERT INTO public.stall VALUES (true);
CREATE TABLE public.part_log (name text);
GRANT ALL ON public.part_log, public.stall TO PUBLIC;
CREATE FUNCTION public.log_parts() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
           WHERE command_tag = 'CREATE TABLE AS' LOOP
    IF r.object_identity LIKE '%\_3' AND EXISTS (SELECT FROM public.stall) THEN
      PERFORM pg_sleep(600);
    END IF;
    INSERT INTO public.part_log VALUES (split_part(r.object_identity, '_', 4));
  END LOOP;
END $$;
CREATE EVENT TRIGGER log_parts ON ddl_command_end EXECUTE FUNCTION public.log_parts();
