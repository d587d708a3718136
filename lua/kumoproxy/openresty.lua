-- kumoproxy.openresty: OpenResty/LuaJIT glue for the kumoproxy module.
-- Placeholder: filled in by the embedding work.
return {}
